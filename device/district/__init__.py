"""The box side of the district: DICOM export, the outgoing queue and its sender, verdicts polled back."""
