"""Drafting method families, one module each; each registers its methods with
decoding/registry.py. decoding/methods.py imports every module here (this package itself
imports nothing, so the families may import each other).

  heads.py   ar, bpd, pbest_0gram      drafts from the heads alone
  local.py   local                     local neural rescoring (Kim et al. 2024, Algorithm 2)
  ngram.py   ngram, pbest_ngram        global n-gram rescoring (exact DP on device, or OpenFST)
  medusa.py  medusa, medusa_local      Medusa sparse trees, alone or with local rescoring
"""
