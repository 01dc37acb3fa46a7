"""Training for diffusers-spacetime: the video-folder dataset, the synthetic shapes generator and the accelerate scripts.

Run the scripts with `accelerate launch training/<script>.py ...` (or `python -m training.<script>`); see
`training/README.md`.
"""
