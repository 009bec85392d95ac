"""The OpenAPI document is the contract a generated client relies on: schemathesis sends every
documented operation generated requests (valid and invalid) and checks that each answer's status,
content type, headers and body are the documented ones, errors included, that nothing answers 5xx
other than a documented 503, and that every authenticated route refuses a request without
credentials.

Two of schemathesis's checks are left out, and why: `positive_data_acceptance` and
`negative_data_rejection` demand that JSON Schema say exactly what the server accepts, and the
server checks more than JSON Schema can say (an image reference's grammar and registry policy, an
OpenSSH key's structure, a pagination cursor's signature, GPU types of the live catalogue). Those
rules have their own tests (tests/security/, tests/security/test_list_pagination.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.core.result import Ok

from tests.api_helpers import PASSWORD, signup, unique_email
from tests.servers import Stack


def _describe(exc: BaseException) -> str:
    text = str(exc)
    for sub in getattr(exc, "exceptions", ()):
        text += f"\n  - {type(sub).__name__}: {str(sub)[:400]}"
    return text[:2000]


def _violations(stack: Stack, examples: int) -> list[str]:
    token, _, _ = signup(stack)
    bearer = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{stack.url}/docs/openapi.json")
    found: list[str] = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            found.append(f"an operation schemathesis cannot read: {result.err()}")
            continue
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def check(case: Any) -> None:
                case.call_and_validate(
                    base_url=stack.url,
                    headers=bearer,
                    excluded_checks=[positive_data_acceptance, negative_data_rejection],
                )

            try:
                check()
            except Unsatisfiable:
                continue  # no invalid request exists for it (no parameters, no body)
            except BaseException as exc:  # schemathesis raises a (base) exception group
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                found.append(f"{operation.label} [{mode.value}]: {_describe(exc)}")
    return found


def test_every_operation_answers_as_documented(stack: Stack) -> None:
    violations = _violations(stack, examples=15)
    assert not violations, "\n\n".join(violations)


def test_a_client_generated_from_the_document_runs_the_walkthrough(
    stack: Stack, tmp_path: Path
) -> None:
    """openapi-python-client, as a customer would run it, then the README's walkthrough with it:
    sign up, a template, a registry credential, a network volume, an instance on it."""
    document = httpx.get(f"{stack.url}/docs/openapi.json", timeout=30)
    assert document.status_code == 200, document.text
    (tmp_path / "openapi.json").write_bytes(document.content)
    venv_bin = Path(sys.executable).parent
    generated = subprocess.run(
        [
            str(venv_bin / "openapi-python-client"),
            "generate",
            "--path",
            str(tmp_path / "openapi.json"),
            "--output-path",
            str(tmp_path / "gpuworker_client"),
            "--meta",
            "none",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        # Its formatting hook runs ruff, which is in this venv.
        env={**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    # A part the generator could not read is left out of the client with a warning.
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        _walkthrough(stack.url)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "gpuworker_client"]:
            del sys.modules[name]


def _walkthrough(url: str) -> None:
    def api(name: str) -> Any:
        return importlib.import_module(f"gpuworker_client.{name}")

    models = api("models")
    client_module = api("client")

    signed_up = api("api.auth.auth_signup_signup").sync(
        client=client_module.Client(base_url=url),
        body=models.SignupIn(name="Ada", email=unique_email("generated"), password=PASSWORD),
    )
    assert isinstance(signed_up, models.TokensOut), signed_up
    client = client_module.AuthenticatedClient(base_url=url, token=signed_up.access_token)

    template = api("api.templates.templates_create_template").sync(
        client=client,
        body=models.TemplateIn(name="generated", image_name="local/busybox:latest"),
    )
    assert isinstance(template, models.TemplateOut), template

    credential = api("api.registry_auth.registry_auth_create_registry_auth").sync(
        client=client,
        body=models.RegistryAuthIn(name="registry", username="ada", password="s3cret-token"),
    )
    assert isinstance(credential, models.RegistryAuthOut), credential
    assert "s3cret-token" not in str(credential.to_dict())

    gpu_types = api("api.catalog.gpu_types_gpu_types").sync(client=client)
    assert isinstance(gpu_types, list), gpu_types
    gpu_type, data_center = next(
        (g.id, a.data_center_id) for g in gpu_types for a in g.availability if a.available > 0
    )

    volume = api("api.volumes.volumes_create_volume").sync(
        client=client, body=models.VolumeIn(name="data", size=10, data_center_id=data_center)
    )
    assert isinstance(volume, models.VolumeOut), volume

    instance = api("api.instances.instances_create_instance").sync(
        client=client,
        body=models.InstanceIn(
            name="generated",
            gpu_type_id=gpu_type,
            template_id=template.id,
            network_volume_id=volume.id,
        ),
    )
    assert isinstance(instance, models.InstanceOut), instance
    assert instance.network_volume_id == volume.id

    # An error comes back as the seed's shape, typed.
    missing = api("api.instances.instances_instance_id_get_instance").sync(
        client=client, instance_id="no-such-instance"
    )
    assert isinstance(missing, models.Error), missing
    assert missing.error.code == 404
