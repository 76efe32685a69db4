"""The diffusion layer: what methods (above) and attacks (further above) share, written once.

    arch.py           architecture adapters: adapter_for(pipe) -> text encoding, the denoiser call, the editable
                      cross-attention K/V projections, the prediction type (SD1/SD2 so far)
    noise.py          forward noising, epsilon / v targets, x0 from a prediction, the diffusion loss
    sampling.py       one classifier-free-guided sampling loop; partial trajectories (x_t), trajectory pools,
                      latents of a concept; the plain pipeline call
    attention.py      cross-attention recording (with autograd), attention-map layout
    prompt_attack.py  the adversarial prompt inner loop (k token slots, discrete or soft)
    tokens.py         token-subsequence positions
"""
