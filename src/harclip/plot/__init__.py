"""The plot stage (`python -m harclip.plot`): figures and tables in plots/, and the offline
page `dvc plots show` fills (`python -m harclip.plot.template`)."""
