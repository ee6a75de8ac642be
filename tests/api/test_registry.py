"""The model registry: scan_models, who may use what, per-request LoRAs, per-model limits and queues."""

import json
import shutil

import numpy as np
import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient
from safetensors.numpy import save_file

from diffusion_api.jobs import queue, services
from diffusion_api.jobs.models import Job, WorkerHeartbeat
from diffusion_api.registry import services as registry_services
from diffusion_api.registry.models import ImageModel, Lora
from diffusion_api.registry.services import model_mark_unusable, registry_scan

pytestmark = pytest.mark.django_db


def write_kohya_lora(path, context_dim: int, rank: int = 4) -> None:
    """A LoRA in kohya's naming on one cross-attention key projection; its down weight takes `context_dim` inputs."""
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file(
        {
            f"{key}.lora_down.weight": np.zeros((rank, context_dim), np.float32),
            f"{key}.lora_up.weight": np.zeros((32, rank), np.float32),
            f"{key}.alpha": np.array(rank, np.float32),
        },
        str(path),
    )


@pytest.fixture
def library(tmp_path, tiny_model_dir):
    """A folder as people keep them: a model, a broken model, a LoRA for it and one for SD 1.x."""
    root = tmp_path / "library"
    shutil.copytree(tiny_model_dir, root / "second")
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "model_index.json").write_text("{}")
    context = json.loads((tiny_model_dir / "unet" / "config.json").read_text())["cross_attention_dim"]
    write_kohya_lora(root / "outline.safetensors", context)
    write_kohya_lora(root / "sd15_style.safetensors", 768)
    return root


def test_scan_registers_models_and_loras_and_records_what_is_broken(library):
    report = registry_scan(directory=library)
    assert report.models == ["second"] and sorted(report.loras) == ["outline", "sd15_style"]
    assert "unet/" in report.unusable["broken"]
    second = ImageModel.objects.get(name="second")
    assert second.usable and second.kind == "custom" and len(second.sha256) == 64 and not second.inpainting
    assert not ImageModel.objects.get(name="broken").usable
    assert Lora.objects.get(name="sd15_style").base_kind == "sd1"
    assert Lora.objects.get(name="outline").format == "kohya"


def test_a_rescan_hashes_again_only_what_changed_and_keeps_the_admins_choices(library, monkeypatch):
    registry_scan(directory=library)
    ImageModel.objects.filter(name="second").update(enabled=False)
    hashed = []
    real = registry_services.hash_weights
    monkeypatch.setattr(registry_services, "hash_weights", lambda path: hashed.append(path) or real(path))
    registry_scan(directory=library)
    assert hashed == [] and not ImageModel.objects.get(name="second").enabled
    weights = next((library / "second" / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")  # a changed weight file: hashed again
    registry_scan(directory=library)
    assert len(hashed) == 1


def test_scan_models_command(library, capsys):
    call_command("scan_models", str(library))
    out = capsys.readouterr().out
    assert "model second: ok" in out and "broken: unusable" in out and "2 LoRAs" in out


def test_models_route_lists_the_registry_to_those_allowed(library, alice_client, bob, bob_client):
    registry_scan(directory=library)
    staff_only = Group.objects.create(name="staff-only")
    ImageModel.objects.get(name="second").groups.add(staff_only)
    names = {m["name"] for m in alice_client.get("/api/v1/models/").json()["models"]}
    assert "tiny" in names and "second" not in names
    bob.groups.add(staff_only)
    models = {m["name"]: m for m in bob_client.get("/api/v1/models/").json()["models"]}
    assert models["second"]["ready"] and models["second"]["kind"] == "custom"
    answer = alice_client.post("/api/v1/jobs/", {"prompt": "x", "model": "second"}, format="json")
    assert answer.status_code == 400 and "not available to you" in str(answer.json()["model"])


def test_disabled_and_broken_models_are_refused_naming_why(library, alice_client, published):
    registry_scan(directory=library)
    ImageModel.objects.filter(name="second").update(enabled=False)
    for model, why in (("second", "disabled"), ("broken", "unusable"), ("nope", "unknown model")):
        answer = alice_client.post("/api/v1/jobs/", {"prompt": "x", "model": model}, format="json")
        assert answer.status_code == 400 and why in str(answer.json()), model
    assert published == []


def test_a_model_marked_unusable_by_a_worker_is_offered_no_more(library, alice_client, published):
    registry_scan(directory=library)
    assert alice_client.post("/api/v1/jobs/", {"prompt": "x", "model": "second"}, format="json").status_code == 202
    assert model_mark_unusable(name="second", problem="unet weights are truncated")
    answer = alice_client.post("/api/v1/jobs/", {"prompt": "x", "model": "second"}, format="json")
    assert answer.status_code == 400 and "truncated" in str(answer.json())


def test_loras_are_resolved_hashed_and_sorted_on_the_job(library, alice_client, published):
    registry_scan(directory=library)
    shutil.copy(library / "outline.safetensors", library / "bold.safetensors")
    registry_scan(directory=library)
    loras = [{"name": "outline", "weight": 0.8}, {"name": "bold"}]
    answer = alice_client.post("/api/v1/jobs/", {"prompt": "x", "loras": loras}, format="json")
    assert answer.status_code == 202, answer.json()
    job = Job.objects.get(id=answer.json()["id"])
    sha = Lora.objects.get(name="outline").sha256
    assert job.loras == [
        {"name": "bold", "weight": 1.0, "sha256": sha},  # the same bytes: the same hash
        {"name": "outline", "weight": 0.8, "sha256": sha},
    ]
    assert answer.json()["parameters"]["loras"] == job.loras


@pytest.mark.parametrize(
    "loras, message",
    [
        ([{"name": "missing"}], "unknown LoRA 'missing'"),
        ([{"name": "outline", "weight": 9}], "weight must be from -4.0 to 4.0"),
        ([{"name": "sd15_style"}], "was made for SD 1.x"),
        ([{"name": "outline"}, {"name": "outline"}], "once"),
        ([{"name": "outline", "strength": 1}], "unknown field"),
    ],
)
def test_bad_loras_are_a_400_naming_the_problem(library, alice_client, published, loras, message):
    registry_scan(directory=library)
    answer = alice_client.post("/api/v1/jobs/", {"prompt": "x", "loras": loras}, format="json")
    assert answer.status_code == 400 and message in json.dumps(answer.json()), answer.json()
    assert published == []


def test_a_models_own_limits_and_defaults_apply(library, alice_client, published):
    registry_scan(directory=library)
    ImageModel.objects.filter(name="second").update(limits={"max_steps": 3}, defaults={"steps": 2})
    answer = alice_client.post("/api/v1/jobs/", {"prompt": "x", "model": "second", "steps": 4}, format="json")
    assert answer.status_code == 400 and "at most 3 steps" in str(answer.json()["steps"])
    answer = alice_client.post("/api/v1/jobs/", {"prompt": "x", "model": "second"}, format="json")
    assert answer.status_code == 202 and answer.json()["parameters"]["steps"] == 2


def test_each_model_has_its_own_queue(monkeypatch, alice):
    sent = []
    monkeypatch.setattr(queue.app, "send_task", lambda name, args, queue: sent.append((args[0], queue)))
    assert queue.publish_job(job_id="j1", model="second")
    assert sent == [("j1", "jobs.second")]
    assert queue.is_jobs_queue("jobs") and queue.is_jobs_queue("jobs.second") and not queue.is_jobs_queue("webhooks")


def test_a_worker_claims_only_the_jobs_of_the_models_it_serves(library, alice, published):
    registry_scan(directory=library)
    tiny = services.job_create(owner=alice, prompt="for tiny")
    second = services.job_create(owner=alice, prompt="for second", model="second")
    assert services.job_claim_next(worker="w", models=["second"]).id == second.id
    assert services.job_claim_next(worker="w", models=["second"]) is None
    assert services.job_claim_next(worker="w", models=None).id == tiny.id


def test_a_job_no_live_worker_serves_says_so_and_health_names_its_model(library, alice, published):
    registry_scan(directory=library)
    WorkerHeartbeat.objects.create(
        hostname="w@a", pid=1, last_seen=timezone.now(), queues=["jobs.tiny"], models=["tiny"]
    )
    second = services.job_create(owner=alice, prompt="for second", model="second")
    tiny = services.job_create(owner=alice, prompt="for tiny")
    assert "no live worker serves model 'second'" in second.waiting_reason and tiny.waiting_reason == ""
    assert APIClient().get("/api/v1/health/").json()["workers"]["unserved_models"] == ["second"]
    WorkerHeartbeat.objects.create(hostname="w@b", pid=2, last_seen=timezone.now(), queues=["jobs"], models=["*"])
    services.job_sweep()
    second.refresh_from_db()
    assert second.waiting_reason == ""


def test_a1111_reads_lora_tags_from_the_prompt_and_lists_the_loras(library, alice_client, published, settings):
    registry_scan(directory=library)
    settings.A1111_WAIT_SECONDS = 0  # answer at once: no worker runs here
    body = {"prompt": "<lora:outline:0.6> a red circle", "width": 32, "height": 32, "steps": 1}
    answer = alice_client.post("/sdapi/v1/txt2img", body, format="json")
    assert answer.status_code in (200, 202), answer.content
    (job,) = Job.objects.all()
    assert job.prompt == "a red circle" and [(x["name"], x["weight"]) for x in job.loras] == [("outline", 0.6)]
    from diffusion_api.a1111.mapping import infotext

    text = infotext(job, 0)  # as A1111 writes it: the tag back in the prompt, the file's hash named
    assert text.startswith("a red circle <lora:outline:0.6>")
    assert f"Lora hashes: \"outline: {job.loras[0]['sha256'][:12]}\"" in text
    listed = alice_client.get("/sdapi/v1/loras").json()
    assert {entry["name"] for entry in listed} == {"outline", "sd15_style"}
    assert listed[0]["path"].endswith(".safetensors") and "/" not in listed[0]["path"]  # no server paths
    models = {m["model_name"]: m for m in alice_client.get("/sdapi/v1/sd-models").json()}
    assert models["second"]["sha256"] == ImageModel.objects.get(name="second").sha256


@pytest.mark.parametrize(
    "prompt, message",
    [("<lora:outline:much> x", "must be a number"), ("<lora:outline:1:0.5> x", "not supported")],
)
def test_a1111_refuses_a_lora_tag_it_cannot_apply(library, alice_client, published, prompt, message):
    registry_scan(directory=library)
    answer = alice_client.post("/sdapi/v1/txt2img", {"prompt": prompt, "width": 32, "height": 32}, format="json")
    assert answer.status_code == 422 and message in json.dumps(answer.json()) and published == []


def test_openai_lists_the_registry_and_refuses_a_forbidden_model(library, alice, alice_client, published):
    from diffusion_api.accounts.services import token_issue

    registry_scan(directory=library)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=alice)}")
    assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {"tiny", "second"}
    ImageModel.objects.get(name="second").groups.add(Group.objects.create(name="few"))
    assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {"tiny"}
    answer = client.post("/v1/images/generations", {"prompt": "x", "model": "second"}, format="json")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "model_not_found"


def test_loras_route_lists_what_a_user_may_apply(library, alice_client):
    registry_scan(directory=library)
    Lora.objects.filter(name="sd15_style").update(enabled=False)
    answer = alice_client.get("/api/v1/loras/").json()
    assert [x["name"] for x in answer["loras"]] == ["outline"] and answer["weight_range"] == [-4.0, 4.0]
    assert answer["loras"][0]["kind"] == "custom" and answer["loras"][0]["format"] == "kohya"


def test_an_sdxl_folder_is_registered_and_refuses_what_it_does_not_take_yet(tmp_path, alice_client, published):
    from generator.tiny import make_tiny_sdxl

    make_tiny_sdxl(tmp_path / "xl" / "tiny-xl")
    registry_scan(directory=tmp_path / "xl")
    record = ImageModel.objects.get(name="tiny-xl")
    assert record.usable and record.kind == "sdxl", record.problem
    answer = alice_client.post("/api/v1/jobs/", {"prompt": "a (red:1.2) circle", "model": "tiny-xl"}, format="json")
    assert answer.status_code == 400 and "SDXL" in str(answer.json()["prompt"])
    answer = alice_client.post("/api/v1/jobs/", {"prompt": "a red circle", "model": "tiny-xl"}, format="json")
    assert answer.status_code == 202, answer.json()
