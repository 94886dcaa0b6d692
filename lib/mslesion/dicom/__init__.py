"""DICOM and DICOMweb: a real Orthanc for development and tests, phantom studies as DICOM MR series, companion
resolution from SeriesDescription patterns, and labels stored back as DICOM SEG."""
