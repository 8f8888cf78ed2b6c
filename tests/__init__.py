from hypothesis import settings

# The first example of a test may load a 3 MB spec; timing belongs in benchmarks, not here.
settings.register_profile("modelwire", deadline=None, print_blob=True)
settings.load_profile("modelwire")
