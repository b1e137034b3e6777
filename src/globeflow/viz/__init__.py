"""Pictures and files from density maps: PNG maps, GeoJSON regions, raster grids."""

from globeflow.viz.export import (
    hpd_level_raster,
    hpd_polygons,
    region_thresholds,
    regions_geojson,
    save_density_npz,
    write_esri_ascii,
    write_geojson,
)

__all__ = [
    "hpd_level_raster",
    "hpd_polygons",
    "region_thresholds",
    "regions_geojson",
    "save_density_npz",
    "write_esri_ascii",
    "write_geojson",
]
