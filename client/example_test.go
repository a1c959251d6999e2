package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
)

func ExampleClient_Chat() {
	url, stop := startKiln()
	defer stop()
	ctx := context.Background()

	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	res, err := c.Chat(ctx, &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: "words"},
		Messages:  []schema.Message{{Role: "user", Content: "hello from the kiln"}},
	}, func(ev schema.Event) error {
		if ev.Type == schema.EventToken {
			fmt.Print(ev.Text)
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println()
	fmt.Println(res.Status, res.FinishReason, res.Usage.CompletionTokens, "tokens")
	// Output:
	// hello from the kiln
	// ok stop 4 tokens
}

func ExampleClient_Submit() {
	url, stop := startKiln()
	defer stop()
	ctx := context.Background()

	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Submit returns once the queue has the job; Wait follows it to its result.
	p, err := c.Submit(ctx, &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: "words", Lane: schema.LaneHigh},
		Messages:  []schema.Message{{Role: "user", Content: "queued then answered"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	res, err := p.Wait(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Text)

	// The result is kept for late readers, under the job's id.
	stored, err := c.Result(ctx, p.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(stored.Status, stored.JobID == p.ID)
	// Output:
	// queued then answered
	// ok true
}

func ExampleClient_Cancel() {
	url, stop := startKiln()
	defer stop()
	ctx := context.Background()

	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	p, err := c.Submit(ctx, &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: "words"},
		Messages:  []schema.Message{{Role: "user", Content: strings.Repeat("more ", 500)}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	// Enough after the first token: the job stops within one more.
	res, err := p.Wait(ctx, func(ev schema.Event) error {
		if ev.Type == schema.EventToken && ev.Seq == 2 {
			return c.Cancel(ctx, p.ID)
		}
		return nil
	})
	fmt.Println(errors.Is(err, client.ErrCancelled), res.Status, res.FinishReason)
	// Output:
	// true cancelled cancelled
}

// startKiln runs in-process what an installation runs on its Pis: a broker
// and a worker whose chat model "words" streams back the words of the last
// message, one every few milliseconds. It returns the broker's URL.
func startKiln() (url string, stop func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, stopBroker, err := brokertest.Start(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(b.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(nc, worker.Config{
		Name:   "example",
		Chat:   map[string]worker.Handler[schema.ChatJob]{"words": words},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		log.Fatal(err)
	}
	return b.ClientURL(), func() {
		_ = w.StopAndCancel(context.Background())
		nc.Close()
		stopBroker()
	}
}

// words streams the words of the last message back as tokens.
var words = worker.HandlerFunc[schema.ChatJob](func(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
	msgs := job.Args.Messages
	var text strings.Builder
	res := &schema.Result{FinishReason: schema.FinishStop}
	for i, word := range strings.Fields(msgs[len(msgs)-1].Content) {
		select {
		case <-ctx.Done():
			res.Text = text.String()
			return res, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if i > 0 {
			word = " " + word
		}
		text.WriteString(word)
		res.Usage.CompletionTokens++
		if err := job.Token(word); err != nil {
			return nil, err
		}
	}
	res.Text = text.String()
	return res, nil
})
