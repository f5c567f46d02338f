"""QGIS layer <-> file conversions and styling from a model card's classes."""
from __future__ import annotations

from pathlib import Path

from qgis.core import (QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsPalettedRasterRenderer, QgsProject,
                       QgsRasterLayer, QgsRendererCategory, QgsVectorLayer)
from qgis.PyQt.QtGui import QColor

from core.raster import RasterError


def raster_source(layer: QgsRasterLayer) -> str:
    """The file behind a raster layer; core reads files with GDAL, not QGIS providers."""
    if layer is None or not layer.isValid():
        raise RasterError("No valid raster layer selected.")
    if layer.providerType() != "gdal":
        raise RasterError(f"Layer '{layer.name()}' comes from the '{layer.providerType()}' provider; "
                          "rs-diffusion needs a file-based raster (save it as GeoTIFF first).")
    return layer.source().split("|")[0]


def vector_source(layer) -> tuple[str, str]:
    """(file, layer name inside it) of an OGR vector layer."""
    if layer is None or not layer.isValid() or layer.providerType() != "ogr":
        raise RasterError("Pick a valid file-based vector layer (GeoPackage, Shapefile, GeoJSON...).")
    parts = layer.source().split("|")
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return parts[0], options.get("layername", "")


def style_class_layer(layer: QgsRasterLayer, classes: list[dict]) -> None:
    entries = [QgsPalettedRasterRenderer.Class(c["value"], QColor(c["color"]), c["name"]) for c in classes]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries))
    layer.triggerRepaint()


def style_polygon_layer(layer: QgsVectorLayer, classes: list[dict]) -> None:
    categories = []
    for c in classes:
        symbol = QgsFillSymbol.createSimple({"color": c["color"], "outline_color": "#202020",
                                             "outline_width": "0.2"})
        categories.append(QgsRendererCategory(c["value"], symbol, c["name"]))
    layer.setRenderer(QgsCategorizedSymbolRenderer("class_id", categories))
    layer.triggerRepaint()


def add_class_outputs(raster_path: str, polygons_path: str, classes: list[dict], name: str,
                      project: QgsProject | None = None) -> list:
    """Add the styled class raster (and polygons) to the project; returns the layers."""
    project = project or QgsProject.instance()
    added = []
    raster = QgsRasterLayer(raster_path, name)
    if raster.isValid():
        style_class_layer(raster, classes)
        project.addMapLayer(raster)
        added.append(raster)
    if polygons_path:
        polygons = QgsVectorLayer(polygons_path, f"{name} polygons", "ogr")
        if polygons.isValid():
            style_polygon_layer(polygons, classes)
            project.addMapLayer(polygons)
            added.append(polygons)
    return added


def add_pair_layers(pairs: list[tuple[str, str]], classes: list[dict], group_name: str,
                    project: QgsProject | None = None) -> list:
    """Image + styled mask layers of generated pairs, in a new (collapsed) layer group."""
    project = project or QgsProject.instance()
    group = project.layerTreeRoot().insertGroup(0, group_name)
    group.setExpanded(False)
    added = []
    for image_path, mask_path in pairs:
        stem = Path(image_path).stem
        image, mask = QgsRasterLayer(image_path, f"{stem} image"), QgsRasterLayer(mask_path, f"{stem} mask")
        if not (image.isValid() and mask.isValid()):
            continue
        style_class_layer(mask, classes)
        for layer in (mask, image):
            project.addMapLayer(layer, False)
            group.addLayer(layer)
        added += [image, mask]
    return added
