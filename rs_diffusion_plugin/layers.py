"""QGIS layer <-> file conversions and styling (from a model card's classes, or like another layer)."""
from __future__ import annotations

from pathlib import Path

from qgis.core import (QgsCategorizedSymbolRenderer, QgsContrastEnhancement, QgsFillSymbol, QgsPalettedRasterRenderer,
                       QgsProject, QgsRasterLayer, QgsRasterRenderer, QgsRendererCategory, QgsSingleBandGrayRenderer,
                       QgsVectorLayer)
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


# Renderers that show a classification's classes value by value: unique values, or classified pseudocolour.
CLASS_RENDERERS = ("paletted", "singlebandpseudocolor")


def class_values(layer: QgsRasterLayer) -> list[tuple[int, str]]:
    """(value, legend label) of every class value present in band 1 of a classification layer.

    The values come from the provider's histogram (nodata excluded), not from the legend: a GDAL
    colour table gives QGIS a 256-entry legend whatever the raster holds. Labels come from the
    layer's unique-values legend when it has one ("" otherwise, or when the label is just the value).
    """
    renderer = layer.renderer()
    legend = {}
    if renderer is not None and renderer.type() == "paletted":
        legend = {int(c.value): c.label for c in renderer.classes() if c.label != f"{int(c.value)}"}
    present = QgsPalettedRasterRenderer.classDataFromRaster(layer.dataProvider(), 1)
    return [(int(c.value), legend.get(int(c.value), "")) for c in present]


def class_style(layer: QgsRasterLayer) -> QgsRasterRenderer | None:
    """A copy of the renderer showing a classification layer's classes, to style a layer derived from it.

    None when the layer shows its values otherwise (e.g. grey): the derived layer then gets the
    QGIS default, which is the raster's own colour table when it has one.
    """
    renderer = layer.renderer() if layer is not None else None
    if renderer is None or renderer.type() not in CLASS_RENDERERS:
        return None
    return renderer.clone()


def apply_class_style(layer: QgsRasterLayer, style: QgsRasterRenderer | None) -> None:
    if style is not None:
        layer.setRenderer(style.clone())  # the layer owns its renderer: keep `style` reusable
        layer.triggerRepaint()


def style_unit_gray(layer: QgsRasterLayer) -> None:
    """Grey from 0 to 1 on band 1: uncertainty rasters (entropy: certain .. uncertain) and fusion weight maps
    (all visible .. all infrared)."""
    provider = layer.dataProvider()
    stretch = QgsContrastEnhancement(provider.dataType(1))
    stretch.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
    stretch.setMinimumValue(0.0)
    stretch.setMaximumValue(1.0)
    renderer = QgsSingleBandGrayRenderer(provider, 1)
    renderer.setContrastEnhancement(stretch)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def add_refined_outputs(refined_path: str, uncertainty_path: str, style: QgsRasterRenderer | None, name: str,
                        project: QgsProject | None = None) -> list:
    """Add a refined classification, styled like its input, and its uncertainty raster; returns the layers."""
    project = project or QgsProject.instance()
    added = []
    refined = QgsRasterLayer(refined_path, f"{name} (refined)")
    if refined.isValid():
        apply_class_style(refined, style)
        project.addMapLayer(refined)
        added.append(refined)
    if uncertainty_path:
        uncertainty = QgsRasterLayer(uncertainty_path, f"{name} (uncertainty)")
        if uncertainty.isValid():
            style_unit_gray(uncertainty)
            project.addMapLayer(uncertainty)
            added.append(uncertainty)
    return added
