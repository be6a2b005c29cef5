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


def _asset_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    return set(defs.resolve_asset_graph().get_all_asset_keys())


def test_scaffold_writes_commented_template() -> None:
    with create_defs_folder_sandbox() as sandbox:
        defs_path = sandbox.scaffold_component(component_cls=SutroResultsComponent, defs_path="sutro")

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
    assert {key.path[0] for key in keys} == {"sutro"}
    assert any("job-abc" in key.path[1] for key in keys)
    assert len(keys) == 2
    assert isinstance(resource, SutroResource)
    assert isinstance(resource.api_key, dg.EnvVar)
    assert str(resource.api_key) == "SUTRO_API_KEY"
    assert isinstance(resource.api_url, dg.EnvVar)
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
            defs_yaml_contents={"type": "dagster_sutro.SutroResultsComponent", "attributes": attributes},
        )
        with sandbox.load_component_and_build_defs(defs_path=defs_path) as (_, defs):
            keys = _asset_keys(defs)
            resources = dict(defs.resources or {})
            graph = defs.resolve_asset_graph()
            groups = {graph.get(key).group_name for key in keys}
            required = {
                resource_key
                for assets_def in graph.assets_defs
                for resource_key in assets_def.required_resource_keys
            }

    assert len(keys) == 4
    assert {key.path[0] for key in keys} == {"sutro", "llm"}
    assert resources == {}
    assert groups == {"sutro"}
    assert "sutro_prod" in required


def test_key_value_in_env_var_field_is_rejected_without_echo() -> None:
    attributes = {
        "resource": {"api_key_env_var": CANARY_KEY + "-pasted"},
        "jobs": [{"job_id": "job-one", "destination": "results/"}],
    }
    component = SutroResultsComponent.resolve_from_dict(attributes)

    with pytest.raises(InvalidInputError, match="name of an environment variable") as error:
        component.build_defs(None)  # type: ignore[arg-type]

    assert CANARY_KEY not in str(error.value)


def test_duplicate_job_is_rejected() -> None:
    component = SutroResultsComponent.resolve_from_dict(
        {
            "jobs": [
                {"job_id": "job-one", "destination": "a/"},
                {"job_id": "job-one", "destination": "b/"},
            ]
        }
    )

    with pytest.raises(InvalidInputError, match="listed twice"):
        component.build_defs(None)  # type: ignore[arg-type]


def test_component_assets_materialize(emulator: SutroEmulator, tmp_path: Path) -> None:
    job_id = emulator.add_job(num_rows=15)
    component = SutroResultsComponent.resolve_from_dict(
        {"jobs": [{"job_id": job_id, "destination": f"{tmp_path / 'results'}/"}]}
    )
    defs = component.build_defs(None)  # type: ignore[arg-type]
    graph = defs.resolve_asset_graph()
    results_keys = [key for key in graph.get_all_asset_keys() if graph.get(key).is_materializable]
    sutro = SutroResource(api_key=emulator.api_key, api_url=emulator.api_url, max_retries=1)

    result = dg.materialize(
        [assets_def for assets_def in graph.assets_defs if assets_def.is_materializable],
        resources={"sutro": sutro},
        instance=dg.DagsterInstance.ephemeral(),
    )

    assert len(results_keys) == 1
    assert result.success
    [materialization] = [
        event.materialization
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key == results_keys[0]
    ]
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
