"""The test and demo harness: a real server in a subprocess, a local Orthanc, phantom studies on DICOMweb."""
