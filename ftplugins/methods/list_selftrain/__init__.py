"""LiST (lite prompted self-training) — work in progress: only the meta re-weighting mechanism exists so far
(:mod:`.reweight`). There is no plugin object and no entry point yet; the teacher/student sessions are to come.
"""
