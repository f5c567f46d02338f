"""The QGIS enum values whose home moved after 3.22, taken from where the running QGIS keeps them.

QGIS 3.36 moved the Processing enums into `Qgis` (3.30 the geometry types) and deprecated the old
names; QGIS 4 (Qt6) keeps only the scoped forms. The algorithms use these names, so they run the same
from 3.22 to QGIS 4 without deprecation warnings.
"""
from qgis.core import (Qgis, QgsProcessing, QgsProcessingParameterDefinition, QgsProcessingParameterFile,
                       QgsProcessingParameterNumber, QgsWkbTypes)

if hasattr(Qgis, "ProcessingSourceType"):   # QGIS >= 3.36
    RASTER_SOURCE = Qgis.ProcessingSourceType.Raster
    POLYGON_SOURCE = Qgis.ProcessingSourceType.VectorPolygon
    INTEGER_NUMBER = Qgis.ProcessingNumberParameterType.Integer
    DOUBLE_NUMBER = Qgis.ProcessingNumberParameterType.Double
    FOLDER = Qgis.ProcessingFileParameterBehavior.Folder
    ADVANCED = Qgis.ProcessingParameterFlag.Advanced
else:
    RASTER_SOURCE = QgsProcessing.SourceType.TypeRaster
    POLYGON_SOURCE = QgsProcessing.SourceType.TypeVectorPolygon
    INTEGER_NUMBER = QgsProcessingParameterNumber.Type.Integer
    DOUBLE_NUMBER = QgsProcessingParameterNumber.Type.Double
    FOLDER = QgsProcessingParameterFile.Behavior.Folder
    ADVANCED = QgsProcessingParameterDefinition.Flag.FlagAdvanced

if hasattr(Qgis, "GeometryType"):   # QGIS >= 3.30
    POLYGON_GEOMETRY = Qgis.GeometryType.Polygon
else:
    POLYGON_GEOMETRY = QgsWkbTypes.GeometryType.PolygonGeometry
