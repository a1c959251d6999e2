// Package sd owns Stable Diffusion 1.5 LCM image generation on one card: the
// package loader (text encoder, UNet, VAE decoder, optional VAE encoder, the
// precomputed time-embedding tables and the CLIP tokenizer), the LCM
// scheduler, the seeded noise, the init-image decode for img2img and the PNG
// encode.
//
// # Pipeline
//
// txt2img: CLIP tokens → text encoder → the 4-step LCM schedule at
// t = 999, 759, 499, 259 (one UNet call per step with the package's time
// embedding row for t, x0 prediction with c_skip/c_out, fresh noise between
// steps) → latent / 0.18215 → VAE decoder → RGB → PNG. img2img decodes the
// init image, resizes it to the model's size, runs the VAE encoder, samples
// the latent, noises it to the first timestep of the schedule's tail (t = 499
// at the default strength 0.5) and denoises from there.
//
// The numbers follow the reference (research/sd-lcm.md §2–§5):
// alphas_cumprod bit for bit as torch computes it, scalars in float64 rounded
// to float32, per-element arithmetic in float32 in the reference's order, and
// the noise from torch's CPU generator algorithm (MT19937, Box–Muller over
// blocks of 16) seeded with the low 32 bits of the seed. The same request
// gives the same PNG bytes.
//
// # Engine package
//
// sd imports no NATS and no wire schema. A Pipeline takes a context and a
// progress callback; cancellation is honoured between steps. Request errors
// are *RequestError values matching one of ErrOutOfRange, ErrOverLimit,
// ErrBadImage, ErrUnsupported, so the adapter in package worker can map them
// to wire codes. A Pipeline runs one image at a time and reuses its buffers
// from one image to the next.
package sd
