"""dataprep: `fasthpt prep`, the offline conversion of image datasets to FFCV and WebDataset files.

    from dataprep import prepare
    path = prepare("sat")                        # embedded generator -> data/sat/
    path = prepare("ucm", src="UCMerced_LandUse.zip", max_res=256)

Dependencies point one way: dataprep builds on fasthpt's core only (fasthpt.errors, fasthpt.fileio,
fasthpt.manifest: the schema it writes and the loaders read) and, to write .beton files, on the one
module of FFCV internals (fasthpt.data.ffcv_compat). Nothing else of fasthpt, and of fasthpt only
the commands that run both stages import dataprep (tests/test_imports.py checks both).
"""

from dataprep.prep import prepare

__all__ = ["prepare"]
