"""One field through the image work: pixel size, quality, the cell finder, crops (no model: that is ``device.model``)."""
