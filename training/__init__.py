"""Training for diffusers-spacetime: a small library (one loop in `loop.py`, flow matching, checkpoints, run logs,
shared flags, data) and thin accelerate scripts that hand the loop their loss step.

Run the scripts with `accelerate launch training/<script>.py ...` (or `python -m training.<script>`); see
`training/README.md`.
"""
