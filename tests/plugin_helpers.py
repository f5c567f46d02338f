"""What the dock tests share (with the `project` fixture of conftest.py): a raster layer added to the
project, and a run cancelled midway."""
from qgis.core import QgsRasterLayer


def add_raster_layer(path, name, project=None) -> QgsRasterLayer:
    """A valid raster layer on `path`, added to `project` when given."""
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    if project is not None:
        project.addMapLayer(layer)
    return layer


def run_then_cancel(qtbot, tab, timeout: int = 60000) -> None:
    """Press Run, Cancel as soon as the task reports progress, and wait until the tab is idle again."""
    tab.run_button.click()
    qtbot.waitUntil(lambda: tab.progress_bar.value() > 0, timeout=timeout)
    tab.cancel_button.click()
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=timeout)
    assert "Cancelled" in tab.log.toPlainText()
