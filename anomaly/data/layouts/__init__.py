"""Layout readers: one class per data set layout, each implementing ``anomaly.data.record.Layout``."""

from anomaly.data.layouts.btad import BTADLayout
from anomaly.data.layouts.folder import FolderLayout
from anomaly.data.layouts.mtd import MTDLayout
from anomaly.data.layouts.mvtec import MVTecLayout
from anomaly.data.layouts.visa import VisaLayout

__all__ = ["BTADLayout", "FolderLayout", "MTDLayout", "MVTecLayout", "VisaLayout"]
