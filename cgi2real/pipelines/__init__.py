"""Ray Data: the map functions each stage streams its files through, the datasets they build, the labeling actor."""
