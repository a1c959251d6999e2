package npu_test

import (
	"context"
	"fmt"
	"log"

	"github.com/kiln-project/kiln/worker/npu"
)

// A decode step of one LLM layer: K and V caches shared by every shape
// group, the hidden state written in, the layer executed, the result read
// back — all in one trip to the device thread.
func Example() {
	ctx := context.Background()
	dev, err := npu.Open(ctx, npu.Config{}) // KILN_AXCL_LIB, first card
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close(ctx)

	const kvBytes = 2559 * 1024 * 2 // context × kv_dim × bf16
	k, err := dev.Alloc(ctx, kvBytes)
	if err != nil {
		log.Fatal(err)
	}
	v, err := dev.Alloc(ctx, kvBytes)
	if err != nil {
		log.Fatal(err)
	}
	layer, err := dev.LoadModel(ctx, "qwen3_p128_l0_together.axmodel", &npu.LoadOptions{
		Bind: map[npu.TensorRef]*npu.Buffer{npu.In("K_cache"): k, npu.In("V_cache"): v},
	})
	if err != nil {
		log.Fatal(err) // a *npu.BudgetError when the card's CMM is spoken for
	}
	hidden := make([]byte, 2560*2)
	out := make([]byte, 2560*2)
	err = dev.Do(ctx, func(t *npu.Thread) error {
		in, _ := layer.Buffer(0, npu.In("input"))
		if err := t.Write(in, 0, hidden); err != nil {
			return err
		}
		if err := t.Execute(layer, 0); err != nil { // group 0: decode
			return err
		}
		res, _ := layer.Buffer(0, npu.Out("output"))
		return t.Read(out, res, 0)
	})
	if err != nil {
		log.Fatal(err)
	}
	p, _ := dev.Properties(ctx)
	fmt.Printf("card %d at %.1f °C\n", dev.ID(), p.TemperatureC())
}

func ExampleCardInfo() {
	info, err := npu.CardInfo(context.Background(), "") // KILN_AXCL_LIB or /usr/lib/axcl/libaxcl_rt.so
	if err != nil {
		log.Fatal(err) // explains how to install the runtime when it is missing
	}
	for _, c := range info.Cards {
		fmt.Printf("card %d (bus %d): %.1f °C, CMM %d/%d MiB, NPU %.0f %%\n",
			c.Index, c.ID, c.TemperatureC, c.CMMUsedMiB, c.CMMTotalMiB, c.NPULoadPercent)
	}
}
