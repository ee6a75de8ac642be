"""The fast path on a CPU: bf16 weights, channels-last memory, SDPA attention and `torch.compile` for shape buckets.

    model = load_model(path, dtype="bf16", decoder="tiny")      # bf16 weights; the model's own tiny VAE decoder
    optimize(model, channels_last=True, buckets=[Bucket(64, 64, 4)])
    generate(model, requests)                                   # same API, same seeds, faster

- bf16 runs on AVX-512 BF16 / AMX units (2.3× fp32's matmul rate on the 2026-12-01 VM,
  `benchmarks/cpu_peak.py`); the loop keeps latents and scheduler arithmetic in fp32 and casts only
  the UNet's input.
- Channels-last lets oneDNN's convolutions skip a layout change on every call.
- Attention goes through PyTorch's `scaled_dot_product_attention` (diffusers' `AttnProcessor2_0`,
  transformers' "sdpa"); `optimize` checks that it does.
- `torch.compile` with inductor's weight freezing compiles the UNet once per bucket, a (width,
  height, images) shape, when the worker starts. A batch smaller than a compiled one of the same size
  is padded up to it (images in a batch do not see each other, so the padding changes nothing but
  time); any other shape runs the eager UNet, so no request waits for a compile.
- SDXL's graphs take two more tensors, its `added_cond_kwargs` (pooled embeds and time ids), padded like the rest; a
  graph compiled with them serves only calls with them, and one compiled without only calls without.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._inductor.config

from generator.loading import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bucket:
    """Images of one width and height generated together; the UNet sees 2 × images rows under guidance."""

    width: int
    height: int
    images: int = 1

    @classmethod
    def parse(cls, text: str) -> Bucket:
        """'64x64' or '64x64x4' (width × height × images)."""
        match = re.fullmatch(r"\s*(\d+)x(\d+)(?:x(\d+))?\s*", text)
        if not match:
            raise ValueError(f"a compile bucket reads WIDTHxHEIGHT or WIDTHxHEIGHTxIMAGES, e.g. 64x64x4; got {text!r}")
        width, height, images = int(match[1]), int(match[2]), int(match[3] or 1)
        if images < 1:
            raise ValueError(f"a compile bucket needs at least 1 image, got {text!r}")
        return cls(width, height, images)


def parse_buckets(text: str) -> list[Bucket]:
    """A comma-separated list of buckets ('' → none)."""
    return [Bucket.parse(part) for part in text.split(",") if part.strip()]


GRAPHS = ("unet", "full", "shallow")  # the plain UNet, and DeepCache's full and shallow steps (generator/deepcache.py)
BACKENDS = ("compile", "openvino")


class PlainUNet(torch.nn.Module):
    """The UNet's plain call with positional tensors in, the prediction out: what a backend compiles."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        from generator.deepcache import added_inputs

        added = added_inputs(text_embeds, time_ids)  # SDXL's pooled embeds and time ids, as two more tensors
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added,
                         return_dict=False)[0]


class BucketedUNet:
    """The UNet, compiled for the shapes in `graphs`; eager for every other shape.

    A plain callable, not a module, so the compiled and eager paths do not register the weights twice;
    other attributes (`parameters`, `device` …) are the eager UNet's. Besides the plain call, `full` and `shallow`
    run DeepCache's two kinds of step, compiled where a bucket of theirs was.

    `backend`: "compile" (torch.compile with inductor's weight freezing) or "openvino" (the UNet converted to
    OpenVINO with static shapes, fp32; its converted models are kept in `cache_dir` under `cache_key` for the next
    start).
    """

    def __init__(
        self, unet: torch.nn.Module, backend: str = "compile", cache_dir: Path | None = None, cache_key: str = ""
    ):
        from generator.deepcache import FullUNet, ShallowUNet

        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.eager = unet
        self.backend = backend
        self.cache_dir, self.cache_key = cache_dir, cache_key  # cache_key: the model's weights (its content hash)
        self.modules = {"unet": PlainUNet(unet), "full": FullUNet(unet), "shallow": ShallowUNet(unet)}
        self._compiled = {}
        if backend == "compile":
            # Freezing makes the weights constants, so oneDNN packs them once instead of on every call (the UNet
            # call at SD 1.5 size, 256², went from 1.56 s to 1.09 s). It is set for the whole process: neither
            # torch.compile(options={"freezing": True}) nor config.patch around the compile froze anything
            # (their profiles still showed aten::mkldnn_convolution, unfused and unpacked).
            torch._inductor.config.freezing = True
            self._compiled = {graph: torch.compile(module, dynamic=False) for graph, module in self.modules.items()}
        self.graphs: dict[tuple[str, int, int, int], Callable] = {}  # (graph, batch, latent h, latent w) → callable
        # The text context's T each graph was compiled for. A weighted or long prompt's context (several windows of
        # the tokenizer's length, generator.prompts) has another T: it runs eager, as any other unbucketed shape,
        # rather than fail a static graph or recompile one for each T. A graph set here by hand takes any T.
        self.context_tokens: dict[tuple[str, int, int, int], int] = {}
        self.takes_added: dict[tuple[str, int, int, int], bool] = {}  # compiled with SDXL's two added inputs
        # Set by generator.lora while a LoRA is active on the eager UNet: the graphs hold the UNet without it.
        self.eager_only = False

    def __getattr__(self, name: str):
        return getattr(self.eager, name)

    @property
    def compiled_batches(self) -> dict[tuple[str, int, int], list[int]]:
        """(graph, latent h, latent w) → the batch sizes compiled, ascending."""
        batches: dict[tuple[str, int, int], list[int]] = {}
        for graph, batch, height, width in sorted(self.graphs):
            batches.setdefault((graph, height, width), []).append(batch)
        return batches

    def compile_for(
        self, batch: int, height: int, width: int, context: torch.Tensor, graph: str = "unet",
        added: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> float:
        """Compile `graph` for UNet inputs (batch, C, height, width) with text context like `context` (1, T, D) and,
        for SDXL, `added` = (pooled embeds (1, P), time ids (1, K)) like the model's; seconds."""
        started = time.perf_counter()
        sample = torch.zeros(
            (batch, self.config.in_channels, height, width), device=context.device, dtype=self.dtype
        ).to(memory_format=torch.channels_last)
        args = [sample, _timestep(500, sample.device), context.expand(batch, -1, -1).contiguous()]
        extra = [] if added is None else [x.expand(batch, -1).contiguous() for x in added]
        with torch.inference_mode():
            if graph == "shallow":
                _, features = self.modules["full"](*args, *extra)
                args.append(features.contiguous(memory_format=torch.channels_last))
            args += extra
            if self.backend == "compile":
                run = self._compiled[graph]
            else:
                run = _openvino_graph(self.modules[graph], args, self._cache_path(graph, args))
            run(*args)  # torch.compile compiles at the first call of a shape
        self.graphs[(graph, batch, height, width)] = run
        self.context_tokens[(graph, batch, height, width)] = context.shape[1]
        self.takes_added[(graph, batch, height, width)] = added is not None
        return time.perf_counter() - started

    def _cache_path(self, graph: str, args: list[torch.Tensor]) -> Path | None:
        if self.cache_dir is None:
            return None
        import openvino

        shapes = "-".join("x".join(map(str, a.shape)) or "0" for a in args)
        version = re.sub(r"[^\w.]", "_", openvino.__version__)  # it holds slashes
        return self.cache_dir / "openvino" / f"{self.cache_key}-{graph}-{shapes}-{version}" / "model.xml"

    def _fit(self, graph: str, sample: torch.Tensor, context: torch.Tensor, kwargs: dict) -> Callable | None:
        """The compiled graph this call pads up to (smallest batch that holds it), or None to run eager."""
        if self.eager_only or kwargs.get("timestep_cond") is not None or kwargs.get("cross_attention_kwargs"):
            return None
        added = kwargs.get("added_cond_kwargs") is not None  # SDXL
        batches = self.compiled_batches.get((graph, *sample.shape[-2:]), [])
        tokens = context.shape[1]  # (N, T, D)
        fits = [b for b in batches if b >= sample.shape[0]]
        fits = [b for b in fits if self.context_tokens.get((graph, b, *sample.shape[-2:]), tokens) == tokens]
        fits = [b for b in fits if self.takes_added.get((graph, b, *sample.shape[-2:]), False) == added]
        return (fits[0], self.graphs[(graph, fits[0], *sample.shape[-2:])]) if fits else None

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, **kwargs):
        rows = sample.shape[0]
        fit = self._fit("unet", sample, encoder_hidden_states, kwargs)
        plain_kwargs = set(kwargs) <= {"return_dict", "timestep_cond", "added_cond_kwargs"}
        added = kwargs.get("added_cond_kwargs")
        if fit is None and plain_kwargs and self._fit("full", sample, encoder_hidden_states, kwargs):
            # DeepCache's full graph: the same output
            return (self.full(sample, timestep, encoder_hidden_states, added_cond_kwargs=added)[0],)
        if fit is None:
            return self.eager(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
        size, run = fit
        sample, encoder_hidden_states, *extra = _pad(size, sample, encoder_hidden_states, *_added_tensors(added))
        # One timestep dtype for every scheduler (ints for DDIM, floats for Euler), so they share one compiled graph.
        return (run(sample, _timestep(timestep, sample.device), encoder_hidden_states, *extra)[:rows],)

    def full(self, sample, timestep, encoder_hidden_states, timestep_cond=None, added_cond_kwargs=None):
        """DeepCache's full step: (output, features), compiled where a "full" bucket fits."""
        from generator.deepcache import unet_full

        rows = sample.shape[0]
        kwargs = {"timestep_cond": timestep_cond, "added_cond_kwargs": added_cond_kwargs}
        fit = self._fit("full", sample, encoder_hidden_states, kwargs)
        if fit is None:
            return unet_full(self.eager, sample, timestep, encoder_hidden_states, **kwargs)
        size, run = fit
        sample, encoder_hidden_states, *extra = _pad(size, sample, encoder_hidden_states,
                                                     *_added_tensors(added_cond_kwargs))
        out, features = run(sample, _timestep(timestep, sample.device), encoder_hidden_states, *extra)
        return out[:rows], features[:rows]

    def shallow(self, sample, timestep, encoder_hidden_states, features, timestep_cond=None, added_cond_kwargs=None):
        """DeepCache's shallow step on kept `features`, compiled where a "shallow" bucket fits."""
        from generator.deepcache import unet_shallow

        rows = sample.shape[0]
        features = features[-rows:]
        kwargs = {"timestep_cond": timestep_cond, "added_cond_kwargs": added_cond_kwargs}
        fit = self._fit("shallow", sample, encoder_hidden_states, kwargs)
        if fit is None:
            return unet_shallow(self.eager, sample, timestep, encoder_hidden_states, features, **kwargs)
        size, run = fit
        sample, encoder_hidden_states, features, *extra = _pad(
            size, sample, encoder_hidden_states, features, *_added_tensors(added_cond_kwargs)
        )
        return run(sample, _timestep(timestep, sample.device), encoder_hidden_states, features, *extra)[:rows]


def _openvino_graph(module: torch.nn.Module, example: list[torch.Tensor], cache: Path | None) -> Callable:
    """`module` converted to OpenVINO for exactly the shapes of `example`, compiled for the CPU in fp32; a callable
    on torch tensors. The converted model is saved at `cache` (an .xml path) and read from there next time."""
    import openvino as ov

    core = ov.Core()
    if cache is not None and cache.is_file():
        converted = core.read_model(cache)
    else:
        converted = ov.convert_model(module, example_input=tuple(example))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(converted, cache, compress_to_fp16=False)
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    compiled = core.compile_model(converted, "CPU", config)
    request = compiled.create_infer_request()

    def run(*tensors: torch.Tensor):
        results = request.infer([t.detach().float().contiguous().numpy() for t in tensors])
        outputs = [torch.from_numpy(results[output].copy()) for output in compiled.outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    return run


def _pad(size: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor padded to `size` rows by repeating its last row (every op in the UNet works per image), 4-d ones
    channels-last."""
    padded = []
    for x in tensors:
        if size > x.shape[0]:
            x = torch.cat([x, x[-1:].expand(size - x.shape[0], *x.shape[1:])])
        padded.append(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x)
    return tuple(padded)


def _added_tensors(added_cond_kwargs: dict | None) -> list[torch.Tensor]:
    """SDXL's added conditioning as the graphs take it: [pooled embeds, time ids]; [] for SD 1.x."""
    return [] if added_cond_kwargs is None else [added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]]


def _timestep(timestep, device: torch.device) -> torch.Tensor:
    # The UNet's timestep embedding computes in fp32 whatever comes in, so this changes no value.
    return torch.as_tensor(timestep, device=device).to(torch.float32).reshape(())


def optimize(
    model: LoadedModel,
    *,
    channels_last: bool = True,
    buckets: list[Bucket] | tuple[Bucket, ...] = (),
    guidance: bool = True,
    cond_only: bool = False,
    deep_cache: bool = False,
    backend: str = "compile",
    cache_dir: Path | None = None,
) -> dict:
    """Apply the fast path to a loaded model in place; returns {graph: compile seconds}.

    `guidance`: compile the UNet batch of classifier-free guidance (2 × images), as the model's default
    guidance scale uses; a request without guidance then runs padded into the same graph.
    `cond_only`: compile the batch of the prompts alone too (1 × images), which steps after a request's
    `guidance_cutoff` run, instead of padding them back to the guided batch.
    `backend`: "compile" (torch.compile) or "openvino"; `cache_dir`: where OpenVINO keeps its converted models.
    `deep_cache`: compile DeepCache's full and shallow steps (`deep_cache_interval` > 1) for the same batches
    instead; a plain call runs the full graph, whose output is the same.
    """
    check_sdpa(model)
    if channels_last:
        for module in (model.unet, model.vae, model.tiny_vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    model.cache["fast_path"] = {"channels_last": channels_last, "buckets": [vars(b) for b in buckets]}
    if not buckets:
        return {}
    factor = model.vae_scale_factor
    if backend == "openvino" and model.dtype != torch.float32:
        raise ValueError(f"the OpenVINO backend runs fp32 models; this one is {model.dtype}")
    unet = model.unet
    if not isinstance(unet, BucketedUNet):
        unet = BucketedUNet(unet, backend, cache_dir, f"{model.content_hash[:16]}-{str(model.dtype)[6:]}")
    model.unet = unet
    context = _empty_prompt_context(model)
    graphs = ("full", "shallow") if deep_cache else ("unet",)
    times = {}
    for bucket in buckets:
        if bucket.width % factor or bucket.height % factor:
            raise ValueError(f"compile bucket {bucket} is not a multiple of the VAE factor {factor}")
        batches = {bucket.images * (2 if guidance else 1)}
        if cond_only:
            batches.add(bucket.images)
        for batch in sorted(batches):
            for graph in graphs:
                seconds = unet.compile_for(batch, bucket.height // factor, bucket.width // factor, context, graph,
                                           _example_added(model, bucket))
                times[f"{bucket.width}x{bucket.height}x{bucket.images}:{graph}:{batch}"] = seconds
                logger.info("compiled the UNet's %s graph for %sx%s, batch %d, in %.1fs", graph, bucket.width,
                            bucket.height, batch, seconds)
    model.cache["fast_path"]["backend"] = backend
    if deep_cache:
        model.cache["fast_path"]["deep_cache"] = True
    return times


def check_sdpa(model: LoadedModel) -> None:
    """Raise if some attention layer does not use `torch.nn.functional.scaled_dot_product_attention`."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = model.unet.eager if isinstance(model.unet, BucketedUNet) else model.unet
    for name, processor in unet.attn_processors.items():
        if not isinstance(processor, AttnProcessor2_0):
            raise ValueError(f"UNet attention {name} uses {type(processor).__name__}, not SDPA (AttnProcessor2_0)")
    for text_encoder in (model.text_encoder, model.text_encoder_2):  # text_encoder_2: SDXL's, else None
        if text_encoder is None:
            continue
        implementation = getattr(text_encoder.config, "_attn_implementation", "sdpa")
        if implementation != "sdpa":
            raise ValueError(f"the text encoder's attention is {implementation!r}, not 'sdpa'")


@torch.inference_mode()
def _example_added(model: LoadedModel, bucket: Bucket) -> tuple[torch.Tensor, torch.Tensor] | None:
    """SDXL's added inputs for a compile: the empty prompt's pooled embeds and the bucket's time ids; None for
    SD 1.x."""
    if not model.is_sdxl:
        return None
    from generator.pipeline import add_time_ids, encode_prompts_pooled

    _, pooled = encode_prompts_pooled([""], model)
    return pooled, add_time_ids(model, bucket.width, bucket.height)[1]


@torch.inference_mode()
def _empty_prompt_context(model: LoadedModel) -> torch.Tensor:
    from generator.pipeline import encode_prompts

    return encode_prompts([""], model)  # (1, T, D) in the model's dtype
