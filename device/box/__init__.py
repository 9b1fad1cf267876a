"""The box: the runtime that wires it together, the capture loop, the button (the server is ``device.serve``)."""
