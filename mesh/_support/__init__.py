"""Small helpers every layer uses: atomic files, stopping tasks, showing untrusted text.

Internal to `mesh`: agents import `mesh`, services import `mesh` and `mesh.service`.
"""
