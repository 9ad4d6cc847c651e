"""Reports written into OUTPUT_DIR: the per-participant QC page (``sub-<label>.html``)."""

from bids_semantoks.reports.participant import report_path, write_participant_report, write_participant_reports

__all__ = ["report_path", "write_participant_report", "write_participant_reports"]
