"""The box: the runtime that wires it together, the capture loop, the server and its watchdog, the button."""
