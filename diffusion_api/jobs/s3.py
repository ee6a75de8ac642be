"""The S3-compatible store (settings: STORAGES["default"] when AWS_STORAGE_BUCKET_NAME is set). Imported only then."""

from functools import cached_property

import boto3
from botocore.config import Config
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

PING_SECONDS = 2.0  # health's one try at the store: it must answer fast even when the store does not


class S3ImageStorage(S3Storage):
    """django-storages' S3Storage, whose presigned links may name another address than the one this process uses.

    In compose the containers reach MinIO as http://minio:9000, a name no client outside can resolve, and a SigV4
    signature covers the host: the link must be signed for the public address (`public_endpoint_url`), not
    rewritten after. Signing needs no request, so the second client never talks to the store.
    """

    def get_default_settings(self):
        return {**super().get_default_settings(), "public_endpoint_url": ""}

    def url(self, name, parameters=None, expire=None, http_method=None):
        if not self.public_endpoint_url:
            return super().url(name, parameters=parameters, expire=expire, http_method=http_method)
        params = {**(parameters or {}), "Bucket": self.bucket_name, "Key": self._normalize_name(clean_name(name))}
        return self._public_client.generate_presigned_url(
            "get_object",
            Params=params,
            ExpiresIn=self.querystring_expire if expire is None else expire,
            HttpMethod=http_method,
        )

    @cached_property
    def _public_client(self):
        return boto3.session.Session().client(  # a boto3 client may be shared by threads (a session may not)
            "s3",
            endpoint_url=self.public_endpoint_url,
            region_name=self.region_name,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=self.client_config,
        )

    def read_bytes(self, name: str) -> bytes:
        """The object's bytes from one GetObject, within the client's timeouts and tries (store.read).

        django-storages' open() HEADs the object, then boto3's managed download HEADs it again and GETs it, each with
        its own tries: three requests where one does, and a stalled body retried by s3transfer besides.
        """
        key = self._normalize_name(clean_name(name))
        return self.connection.meta.client.get_object(Bucket=self.bucket_name, Key=key)["Body"].read()

    def ping(self) -> None:
        """HEAD the bucket once, within PING_SECONDS: health's question (raises what botocore raises)."""
        self._ping_client.head_bucket(Bucket=self.bucket_name)

    @cached_property
    def _ping_client(self):
        quick = Config(connect_timeout=PING_SECONDS, read_timeout=PING_SECONDS, retries={"total_max_attempts": 1})
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=self.client_config.merge(quick),
        )
