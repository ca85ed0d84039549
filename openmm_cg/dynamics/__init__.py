"""Learned large-time-step CG dynamics (Fu et al., TMLR 2023): clustering, data, model, propagator."""
