class AutoencoderKLSpacetime:  # placeholder: being written
    pass
