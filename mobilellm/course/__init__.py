"""The course: what needs this checkout (its notebooks, cached results, figures, README and book).

The library (``mobilellm``) never imports from here; everything here may import the library.
"""
