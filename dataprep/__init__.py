"""dataprep: `fasthpt prep`, the offline conversion of image datasets to FFCV and WebDataset files.

    from dataprep import prepare
    path = prepare("sat")                        # embedded generator -> data/sat/
    path = prepare("ucm", src="UCMerced_LandUse.zip", max_res=256)
"""

from dataprep.prep import prepare

__all__ = ["prepare"]
