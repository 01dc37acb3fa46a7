"""The valid sizes nearest to a bad one, for the error messages of the models and the pipelines."""


def nearest_valid_sizes(value: int, multiple: int, offset: int = 0) -> str:
    """'a or b': the valid sizes `offset + k*multiple` (at least max(offset, 1)) nearest to `value`."""
    smallest = offset if offset >= 1 else multiple
    if value <= smallest:
        return str(smallest)
    lower = offset + (value - offset) // multiple * multiple
    return f"{lower} or {lower + multiple}"
