"""The district review page: every box's samples from the district's Orthanc (DICOMweb), a haematologist's
verdict stored back as a new DICOM object. Imports nothing of the box's capture or analysis."""
