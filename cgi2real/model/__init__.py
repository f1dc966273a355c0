"""The networks, their packages, their input on the device, and the supervised training maths, in plain torch."""
