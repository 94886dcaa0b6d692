"""DICOM and DICOMweb: phantom studies as DICOM MR series, companion
resolution from SeriesDescription patterns, and labels stored back as DICOM SEG."""
