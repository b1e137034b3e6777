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
from globeflow.viz.maps import plot_density_map
from globeflow.viz.report import density_report

__all__ = [
    "density_report",
    "hpd_level_raster",
    "hpd_polygons",
    "plot_density_map",
    "region_thresholds",
    "regions_geojson",
    "save_density_npz",
    "write_esri_ascii",
    "write_geojson",
]
