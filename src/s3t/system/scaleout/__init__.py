"""Serving from many machines: one deletion authority that alone opens the workspace, and
prediction replicas that hold only the served stages, fenced by epochs and leases so that
no replica can outrun a deletion (:mod:`~s3t.system.scaleout.authority`,
:mod:`~s3t.system.scaleout.replica`)."""
