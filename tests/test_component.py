"""The YAML component: scaffolding, loading, and the real ``dg`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from dagster_sutro import InvalidInputError, SutroResource, SutroResultsComponent
from dagster_sutro.testing import SutroEmulator

DG = Path(sys.executable).with_name("dg")
CANARY_KEY = "sk_canary_" + "0c4e7d9a2f61b835"
PROJECT_RESOURCE = """\
import dagster as dg

from dagster_sutro import SutroResource


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "sutro_prod": SutroResource(
                api_key=dg.EnvVar("SUTRO_API_KEY"), api_url=dg.EnvVar("SUTRO_API_URL")
            )
        }
    )
"""


def _asset_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    return set(defs.resolve_asset_graph().get_all_asset_keys())


def test_scaffold_writes_commented_template() -> None:
    with create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(
            component_cls=SutroResultsComponent, defs_path="sutro"
        )

        text = (defs_path / "defs.yaml").read_text()
        data = yaml.safe_load(text)

    assert data["type"].endswith("SutroResultsComponent")
    assert data["attributes"]["resource"] == {
        "api_url_env_var": "SUTRO_API_URL",
        "api_key_env_var": "SUTRO_API_KEY",
    }
    [job] = data["attributes"]["jobs"]
    assert set(job) == {
        "job_id",
        "destination",
        "include_inputs",
        "include_cumulative_logprobs",
        "key_prefix",
        "observe_cron",
    }
    assert data["requirements"] == {"env": ["SUTRO_API_URL", "SUTRO_API_KEY"]}
    assert "Never put the API key itself" in text
    assert "sk_" not in text


def test_scaffold_and_load_builds_assets_and_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTRO_API_KEY", CANARY_KEY)
    with create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(
            component_cls=SutroResultsComponent,
            defs_path="sutro",
            scaffold_params={"job_id": "job-abc", "destination": "s3://bucket/sutro/"},
        )
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (component, defs):
            assert isinstance(component, SutroResultsComponent)
            [job] = component.jobs
            keys = _asset_keys(defs)
            resource = (defs.resources or {})["sutro"]

    assert job.job_id == "job-abc"
    assert job.destination == "s3://bucket/sutro/"
    assert keys == {
        dg.AssetKey(["sutro", "job_abc", "artifact"]),
        dg.AssetKey(["sutro", "job_abc", "results"]),
    }
    assert isinstance(resource, SutroResource)
    assert isinstance(resource.api_key, dg.EnvVar)
    assert resource.api_key.env_var_name == "SUTRO_API_KEY"
    assert isinstance(resource.api_url, dg.EnvVar)
    assert resource.api_url.env_var_name == "SUTRO_API_URL"
    assert CANARY_KEY not in repr(resource)


def test_several_jobs_and_existing_resource() -> None:
    attributes = {
        "resource": None,
        "resource_key": "sutro_prod",
        "group_name": "sutro",
        "jobs": [
            {"job_id": "job-one", "destination": "results/"},
            {
                "job_id": "job-two",
                "destination": "results/",
                "include_inputs": True,
                "key_prefix": ["llm", "batch"],
                "observe_cron": "0 * * * *",
            },
        ],
    }
    with create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(
            component_cls=SutroResultsComponent,
            defs_path="sutro",
            defs_yaml_contents={
                "type": "dagster_sutro.SutroResultsComponent",
                "attributes": attributes,
            },
        )
        # The resource that "resource: null" relies on, defined elsewhere in the project.
        (sandbox.defs_folder_path / "resources.py").write_text(PROJECT_RESOURCE)
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (_, component_defs):
            component_resources = dict(component_defs.resources or {})
        with sandbox.build_all_defs() as defs:
            keys = _asset_keys(defs)
            graph = defs.resolve_asset_graph()
            groups = {graph.get(key).group_name for key in keys}
            required = {
                resource_key
                for assets_def in graph.assets_defs
                for resource_key in assets_def.required_resource_keys
            }

    assert component_resources == {}
    assert keys == {
        dg.AssetKey(["sutro", "job_one", "artifact"]),
        dg.AssetKey(["sutro", "job_one", "results"]),
        dg.AssetKey(["llm", "batch", "job_two", "artifact"]),
        dg.AssetKey(["llm", "batch", "job_two", "results"]),
    }
    assert groups == {"sutro"}
    assert "sutro_prod" in required


def test_pasted_key_rejected_without_echo() -> None:
    attributes = {
        "resource": {"api_key_env_var": CANARY_KEY + "-pasted"},
        "jobs": [{"job_id": "job-one", "destination": "results/"}],
    }
    component = SutroResultsComponent.resolve_from_dict(attributes)

    with pytest.raises(InvalidInputError, match="name of an environment variable") as error:
        component.build_defs(None)  # type: ignore[arg-type]

    assert CANARY_KEY not in str(error.value)


@pytest.mark.parametrize("second_id", ["job-one", "job_one"])
def test_duplicate_job_is_rejected(second_id: str) -> None:
    component = SutroResultsComponent.resolve_from_dict(
        {
            "jobs": [
                {"job_id": "job-one", "destination": "a/"},
                {"job_id": second_id, "destination": "b/"},
            ]
        }
    )

    with pytest.raises(InvalidInputError, match="same asset keys"):
        component.build_defs(None)  # type: ignore[arg-type]


def test_component_assets_materialize_with_env_vars(
    emulator: SutroEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = emulator.add_job(job_id="job-component", num_rows=15)
    component = SutroResultsComponent.resolve_from_dict(
        {"jobs": [{"job_id": job_id, "destination": f"{tmp_path / 'results'}/"}]}
    )
    defs = component.build_defs(None)  # type: ignore[arg-type]
    results_key = dg.AssetKey(["sutro", "job_component", "results"])
    # The resource reads both variables when the run starts, not when the component loads.
    monkeypatch.setenv("SUTRO_API_URL", emulator.api_url)
    monkeypatch.setenv("SUTRO_API_KEY", emulator.api_key)

    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=[results_key]
    )

    assert result.success
    [materialization] = result.asset_materializations_for_node("sutro__job_component__results")
    assert materialization.metadata["dagster/row_count"].value == 15


def _write_skeleton(root: Path, name: str) -> None:
    """Write the files ``create-dagster project`` makes that ``dg`` needs."""
    package = root / "src" / name
    (package / "defs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import dagster as dg


            @dg.definitions
            def defs() -> dg.Definitions:
                return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            """
        )
    )
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [project]
            name = "{name}"
            version = "0.1.0"
            requires-python = ">=3.10"
            dependencies = ["dagster-sutro"]

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "{name}"
            registry_modules = ["{name}.components.*"]
            """
        )
    )


@pytest.mark.skipif(not DG.exists(), reason=f"the dg command line is not installed at {DG}")
def test_dg_cli_scaffolds_and_loads(tmp_path: Path) -> None:
    name = "sutro_scaffold_project"
    root = tmp_path / name
    _write_skeleton(root, name)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "SUTRO_API_URL": "http://127.0.0.1:9",
        "SUTRO_API_KEY": CANARY_KEY,
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    (tmp_path / "dagster_home").mkdir()

    def dg_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DG), *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
        )

    components = dg_command("list", "components")
    scaffold = dg_command(
        "scaffold",
        "defs",
        "dagster_sutro.SutroResultsComponent",
        "sutro",
        "--json-params",
        '{"job_id": "job-cli", "destination": "results/"}',
    )
    defs_yaml = root / "src" / name / "defs" / "sutro" / "defs.yaml"
    check = dg_command("check", "defs")
    listed = dg_command("list", "defs", "--json")

    assert components.returncode == 0, components.stderr
    assert "dagster_sutro.SutroResultsComponent" in components.stdout
    assert scaffold.returncode == 0, scaffold.stdout + scaffold.stderr
    data = yaml.safe_load(defs_yaml.read_text())
    assert data["type"] == "dagster_sutro.SutroResultsComponent"
    assert data["attributes"]["jobs"][0]["job_id"] == "job-cli"
    assert check.returncode == 0, check.stdout + check.stderr
    assert listed.returncode == 0, listed.stderr
    assert "job-cli" in listed.stdout
    assert CANARY_KEY not in listed.stdout + listed.stderr + check.stdout + check.stderr
