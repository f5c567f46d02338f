"""Dependency discovery and the pip install dialog (pip runs for real, from the local wheels)."""

import sys
from importlib import metadata

import pytest

from rs_diffusion_plugin import dependencies as deps


@pytest.fixture(autouse=True)
def _isolated_sys_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv(deps.ENV_VAR, raising=False)


def before_system_packages(path) -> bool:
    """Our folders go before the system's site/dist-packages (torch needs its own sympy & co.)."""
    system = [i for i, e in enumerate(sys.path) if e.endswith(("dist-packages", "site-packages"))
              and e != str(path)]
    return sys.path.index(str(path)) < min(system, default=len(sys.path)) and sys.path[0] != str(path)


def test_configure_sys_path_adds_env_dirs_and_is_idempotent(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv(deps.ENV_VAR, deps.os.pathsep.join([str(a), "", str(tmp_path / "missing"), str(b)]))
    first = sys.path[0]

    assert deps.configure_sys_path(None) == [str(a), str(b)]
    assert sys.path[0] == first and before_system_packages(a) and before_system_packages(b)
    assert sys.path.index(str(a)) < sys.path.index(str(b))
    assert str(tmp_path / "missing") not in sys.path

    assert deps.configure_sys_path(None) == []
    assert sys.path.count(str(a)) == 1 and sys.path.count(str(b)) == 1


def test_configure_sys_path_uses_profile_dir_only_when_it_exists(tmp_path):
    target = deps.dependency_dir(tmp_path)
    assert target == tmp_path / "python" / "rs_diffusion_deps"
    assert deps.configure_sys_path(tmp_path) == []
    assert str(target) not in sys.path

    target.mkdir(parents=True)
    assert deps.configure_sys_path(str(tmp_path)) == [str(target)]
    assert before_system_packages(target)
    assert deps.configure_sys_path(str(tmp_path)) == []


def test_missing_dependencies():
    missing = deps.missing_dependencies({"json": "json", "rs_diffusion_no_such_module": "x"})
    assert missing == ["rs_diffusion_no_such_module"]
    assert set(deps.missing_dependencies()) <= set(deps.REQUIRED_MODULES)


def test_missing_dependencies_survives_broken_parent_package():
    # find_spec("a.b") imports "a"; a missing parent must count as missing, not raise.
    assert deps.missing_dependencies({"rs_diffusion_no_such_module.sub": ""}) == [
        "rs_diffusion_no_such_module.sub"
    ]


def test_pip_install_command_pins_installed_packages(tmp_path):
    target = tmp_path / "deps"
    argv = deps.pip_install_command(target, ["six"], python="/usr/bin/python3")

    assert argv[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    assert argv[argv.index("--target") + 1] == str(target)
    assert argv[argv.index("--upgrade-strategy") + 1] == "only-if-needed"
    assert argv[-1] == "six"
    constraints = argv[argv.index("-c") + 1]
    lines = open(constraints, encoding="utf-8").read().splitlines()
    assert f"numpy=={metadata.version('numpy')}" in lines
    assert "numpy<2" in lines
    assert not (target / "six.py").exists()


def test_python_executable_is_a_python(tmp_path):
    assert "python" in deps.pip_install_command(tmp_path / "deps", [])[0].lower()
    python = deps.python_executable()
    assert python.startswith(sys.base_exec_prefix)  # the interpreter QGIS embeds, not a venv's or pyenv's
    import subprocess
    version = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert version == [str(v) for v in sys.version_info[:2]]


@pytest.mark.slow
def test_dialog_installs_with_pip(qtbot, tmp_path):
    target = tmp_path / "deps"
    dialog = deps.DependencyInstallDialog(str(target), ["six"], python=sys.executable)
    qtbot.addWidget(dialog)
    assert "six" in dialog.info_label.text()

    with qtbot.waitSignal(dialog.finished_install, timeout=120000) as blocker:
        dialog.install_button.click()
        assert not dialog.install_button.isEnabled()

    assert blocker.args == [True]
    text = dialog.output.toPlainText()
    assert "--target" in text.splitlines()[0]
    assert "Successfully installed six" in text
    assert (target / "six.py").is_file()
    assert before_system_packages(target)
    assert "successfully" in dialog.status_label.text()
    assert dialog.output.isReadOnly()


@pytest.mark.slow
def test_dialog_reports_failed_install(qtbot, tmp_path):
    dialog = deps.DependencyInstallDialog(
        str(tmp_path / "deps"), ["this-package-does-not-exist-rsdiff==0"], python=sys.executable
    )
    qtbot.addWidget(dialog)

    with qtbot.waitSignal(dialog.finished_install, timeout=120000) as blocker:
        dialog.install_button.click()

    assert blocker.args == [False]
    assert "No matching distribution" in dialog.output.toPlainText()
    assert "exit code 1" in dialog.status_label.text()
    assert dialog.install_button.isEnabled()


def test_dialog_reports_missing_python(qtbot, tmp_path):
    dialog = deps.DependencyInstallDialog(str(tmp_path / "deps"), ["six"], python=str(tmp_path / "nopython"))
    qtbot.addWidget(dialog)

    with qtbot.waitSignal(dialog.finished_install, timeout=10000) as blocker:
        dialog.install_button.click()

    assert blocker.args == [False]
    assert "Could not start" in dialog.status_label.text()
