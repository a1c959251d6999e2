package sd_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/kiln-project/kiln/worker/npu"
	"github.com/kiln-project/kiln/worker/sd"
)

// One txt2img image with progress, written to a file.
func Example() {
	ctx := context.Background()
	dev, err := npu.Open(ctx, npu.Config{}) // KILN_AXCL_LIB, first card
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close(ctx)
	p, err := sd.Open(ctx, dev, "/var/lib/kiln/models/sd15-lcm", sd.Config{})
	if err != nil {
		log.Fatal(err) // a *npu.BudgetError when the card's CMM is spoken for
	}
	defer p.Close(ctx)
	res, err := p.Generate(ctx, &sd.Request{Prompt: "a red fox in the snow", Seed: 7}, func(step, steps int) error {
		fmt.Printf("step %d/%d\n", step, steps)
		return nil // an error here stops the run
	})
	if err != nil {
		log.Fatal(err) // a *sd.RequestError (errors.Is sd.ErrOutOfRange, …) for a request the package cannot serve
	}
	fmt.Printf("%d×%d, host %v of %v\n", res.Width, res.Height, res.Timings.Host(), res.Timings.Total)
	if err := os.WriteFile("fox.png", res.PNG, 0o644); err != nil {
		log.Fatal(err)
	}
}
