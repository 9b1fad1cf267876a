"""A push-button on a GPIO pin that captures, like the Capture button on the page.

gpiozero is imported only when a pin is configured; tests drive it through
gpiozero's own mock pin factory, the same interface the real pins use.
"""
from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("leukoscope.button")


def start_button(pin: int, on_press: Callable[[], None], pin_factory=None):
    from gpiozero import Button

    button = Button(pin, pull_up=True, bounce_time=0.05, pin_factory=pin_factory)

    def pressed():
        try:
            on_press()
        except Exception:  # noqa: BLE001 - a bad press must not kill gpiozero's thread
            log.exception("capture from the push-button failed")

    button.when_pressed = pressed
    return button
