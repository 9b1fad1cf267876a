"""One field through the analysis: pixel size, quality, the cell finder, crops, the classifier."""
