// Package card owns the card a worker process holds: it finds the model
// packages in the models folder, loads them onto the card in order, each
// on its own (a package that fails to load is marked failed with its
// reason and the others serve), and unloads them newest first, resets the card under a lock after a device
// fault (reloading the same packages), tells device faults and lost cards
// from other errors (IsFault), and reports the card's status and
// temperatures for heartbeats and the thermal governor.
//
// Check (kiln models check) reports what kiln will do with package
// folders: files, runtime, tokenizer, every model's tensors, and why a
// package is refused.
//
// The load order is one rule (order.go): ONNX-built engines (SD, vision
// encoders) before llm_build ones. A health check after every load and
// reset executes one engine; a card found wedged at start is rebooted and
// loaded again; a lost card is rebooted before the worker exits
// (wedge.go, docs/card.md "When the card wedges"). Lock keeps a second
// process off a card a worker holds.
//
// A Card is the worker's worker.Device, worker.Loader,
// worker.ModelChecker and worker.Rebooter. Its handlers
// (ChatHandlers, ImageHandlers) stay valid across resets: each calls
// whichever instance of its model is loaded now, and each is a
// worker.Capacity: a chat model runs Config.Slots jobs at once (its K/V
// slots, llm.Options.Slots), an image model one; MaxJobs is their sum, the
// worker's Config.MaxJobs. Slots that do not fit the CMM budget refuse
// that package (llm.SlotBudgetError, with the figures) like any other
// load failure. The adapters that turn a
// job into an engine call live here too: ChatHandler serves chat jobs with
// an llm.Model (chat templates, sampling settings, images scaled for the
// vision encoder), ImageHandler serves image jobs with an sd.Pipeline.
//
// Imports point one way: cmd/kiln → card → {llm, sd, tokenize} → npu →
// axcl. The worker package (the queue runtime) imports no engine: it knows
// a card only through worker.Device and the handlers.
package card
