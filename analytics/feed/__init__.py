"""The provincial feed's pure core: report formats, report building and the data-quality self-check."""

from dcpue.analytics.feed.reports import (
    DEFAULT_ON_TIME_S,
    PARTS_OF,
    REPORT_WINDOWS,
    QualityRules,
    build_reports,
    content_digest,
    csv_columns,
    flatten,
    report_id,
)
from dcpue.analytics.feed.schema import REPORT_TYPES, SCHEMA_VERSION, json_schemas

__all__ = ["DEFAULT_ON_TIME_S", "PARTS_OF", "REPORT_TYPES", "REPORT_WINDOWS", "SCHEMA_VERSION", "QualityRules",
           "build_reports", "content_digest", "csv_columns", "flatten", "json_schemas", "report_id"]
