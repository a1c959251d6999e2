package worker_test

import (
	"context"
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

// shout is a chat model that answers in capitals, one word per token.
type shout struct{}

func (shout) Handle(ctx context.Context, job *worker.Job[schema.ChatJob]) (*schema.Result, error) {
	msgs := job.Args.Messages
	last := msgs[len(msgs)-1]
	if len(last.Images) > 0 {
		// The request's fault: the job ends with this error, never retried.
		return nil, schema.Errorf(schema.CodeUnsupported, "messages.images", "shout reads no images")
	}
	res := &schema.Result{FinishReason: schema.FinishStop}
	var text []string
	for _, word := range strings.Fields(strings.ToUpper(last.Content)) {
		if err := ctx.Err(); err != nil {
			// Cancelled, expired or handed back: what is returned is kept
			// as the partial result.
			res.Text = strings.Join(text, " ")
			return res, err
		}
		if len(text) > 0 {
			word = " " + word
		}
		if err := job.Token(word); err != nil {
			return nil, err
		}
		text = append(text, strings.TrimSpace(word))
	}
	res.Text = strings.Join(text, " ")
	res.Usage.CompletionTokens = len(text)
	return res, nil
}

func ExampleHandler() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A broker for the example; a worker on a Pi connects to the
	// installation's (kiln up, kiln broker).
	b, stopBroker, err := brokertest.Start(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer stopBroker()
	nc, err := nats.Connect(b.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	w, err := worker.New(nc, worker.Config{
		Name:   "pi1-card0",
		Chat:   map[string]worker.Handler[schema.ChatJob]{"shout": shout{}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer w.Stop(ctx)

	// Any client of the queue now reaches the handler.
	c, err := client.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	res, err := c.Chat(ctx, &schema.ChatJob{
		JobHeader: schema.JobHeader{Model: "shout"},
		Messages:  []schema.Message{{Role: "user", Content: "hello, kiln"}},
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (%s, by %s, attempt %d)\n", res.Text, res.Status, res.Worker, res.Attempt)
	// Output:
	// HELLO, KILN (ok, by pi1-card0, attempt 1)
}
