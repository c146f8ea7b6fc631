"""Great-circle distances and spatial isolation of sites (haversine on a spherical Earth)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dcpue.errors import missing_extra

# IUGG mean Earth radius [km]; a sphere is within ~0.5 % of the ellipsoid's geodesic distance
EARTH_RADIUS_KM = 6371.0088


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance [km] between points given in degrees; arrays broadcast (NaN in, NaN out)."""
    p1, p2 = np.radians(np.asarray(lat1, dtype=float)), np.radians(np.asarray(lat2, dtype=float))
    dphi = p2 - p1
    dlam = np.radians(np.asarray(lon2, dtype=float)) - np.radians(np.asarray(lon1, dtype=float))
    a = np.sin(dphi / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlam / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def distance_matrix_km(lat: Any, lon: Any, to_lat: Any, to_lon: Any) -> np.ndarray:
    """Distances [km] from every point (rows) to every target (columns)."""
    lat, lon = np.asarray(lat, dtype=float)[:, None], np.asarray(lon, dtype=float)[:, None]
    return haversine_km(lat, lon, np.asarray(to_lat, dtype=float)[None, :], np.asarray(to_lon, dtype=float)[None, :])


def isolated(lat: Any, lon: Any, eps_km: float, min_sites: int) -> np.ndarray:
    """Per point: 1.0 if DBSCAN (haversine, ``eps_km``, ``min_samples=min_sites``) marks it noise — fewer
    than ``min_sites`` points (itself included) within ``eps_km`` and not near a core point —, 0.0 if
    it belongs to a group, NaN where its coordinates are unknown."""
    try:
        from sklearn.cluster import DBSCAN
    except ImportError as exc:  # pragma: no cover - the ml extra is installed in tests
        raise missing_extra("scikit-learn", "ml") from exc
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    out = np.full(lat.shape, np.nan)
    known = ~(np.isnan(lat) | np.isnan(lon))
    if not known.any():
        return out
    coords = np.radians(np.column_stack([lat[known], lon[known]]))
    labels = DBSCAN(eps=eps_km / EARTH_RADIUS_KM, min_samples=min_sites, metric="haversine",
                    algorithm="ball_tree").fit(coords).labels_
    out[known] = (labels == -1).astype(float)
    return out
