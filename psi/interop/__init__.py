"""Interoperation with other privacy-computing platforms (optional: ``pip install psiq[interop]``)."""
