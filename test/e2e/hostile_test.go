package e2e

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/brokertest"
	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/wait"
)

// maxWorkerHWM bounds the worker process's peak resident memory (VmHWM)
// over the whole hostile-bytes test. Measured on linux/amd64: 19 MiB after a
// first job and 29 MiB after all the hostile bodies; 42 and 69 MiB under
// -race. Without the shape bounds (schema/bounds.go) the worker dies on the
// first body (the msgpack library allocates the declared length; deep
// nesting grew one to 1.1 GiB before it died). The bound leaves room for
// the race detector and other machines, far below one such allocation.
const maxWorkerHWM = 200 << 20

// A running worker process gets the bodies that used to kill it: a 103-byte
// msgpack body that declares a four-billion-element array, a few megabytes
// of nested msgpack arrays, deep JSON, huge declared strings and maps. Each
// is answered once with bad_msgpack or bad_json on its Kiln-Reply-To
// subject and terminated (never redelivered, so it cannot kill again), the
// worker keeps serving, and its peak RSS stays under maxWorkerHWM.
func TestHostileBytesAreAnsweredWithBoundedMemory(t *testing.T) {
	t.Parallel()
	url := startBroker(t, 3*time.Second)
	c := newClient(t, url)
	w := child(t, envRole+"=worker", envURL+"="+url, envName+"=sturdy")
	waitWorkers(t, c, 1)
	ctx := t.Context()
	if res, err := c.Chat(ctx, longJob(3, 0), nil); err != nil || res.Worker != "sturdy" {
		t.Fatalf("first job: %+v, %v", res, err)
	}
	before := peakRSS(t, w.Process.Pid)

	u32 := func(lead byte, n uint32) []byte { return binary.BigEndian.AppendUint32([]byte{lead}, n) }
	huge := append([]byte{0x81, 0xa8}, "messages"...)
	huge = append(huge, u32(0xdd, 0xffffffff)...)
	huge = append(huge, bytes.Repeat([]byte{0x90}, 103-len(huge))...)
	deep := append(bytes.Repeat([]byte{0x91}, 3<<20), 0xc0)
	hostile := []struct {
		name, ctype string
		body        []byte
		code        schema.ErrorCode
	}{
		{"msgpack huge array (103 bytes)", schema.ContentMsgpack, huge, schema.CodeBadMsgpack},
		{"msgpack deep nesting (3 MiB)", schema.ContentMsgpack, deep, schema.CodeBadMsgpack},
		{"msgpack huge map", schema.ContentMsgpack, append(u32(0xdf, 0xfffffff0), 0xa1, 'x', 0xc0), schema.CodeBadMsgpack},
		{"msgpack huge string", "", u32(0xdb, 0xffffffff), schema.CodeBadMsgpack},
		{"msgpack huge binary", "", append(u32(0xc6, 1<<30), 1, 2, 3), schema.CodeBadMsgpack},
		{"json deep objects (5 MiB, no Content-Type)", "", []byte(strings.Repeat(`{"a":`, 1<<20)), schema.CodeBadJSON},
		{"json deep arrays (3 MiB)", schema.ContentJSON, []byte(strings.Repeat("[", 3<<20)), schema.CodeBadJSON},
		{"json deep inside a job", schema.ContentJSON, []byte(`{"id":"x","model":"echo","metadata":` + strings.Repeat(`{"a":`, 1<<16)), schema.CodeBadJSON},
	}
	nc := brokertest.ConnectURL(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subject := schema.Subjects{}.Job(schema.KindChat, "echo", schema.LaneNormal)
	for i, h := range hostile {
		id := fmt.Sprintf("hostile-%d", i)
		reply := "raw.hostile." + id
		sub, err := nc.SubscribeSync(reply)
		if err != nil {
			t.Fatal(err)
		}
		m := &nats.Msg{Subject: subject, Data: h.body, Header: nats.Header{}}
		if h.ctype != "" {
			m.Header.Set(schema.HeaderContentType, h.ctype)
		}
		m.Header.Set(jetstream.MsgIDHeader, id)
		m.Header.Set(schema.HeaderReplyTo, reply)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("%s: publish: %v", h.name, err)
		}
		em, err := sub.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatalf("%s: no answer: %v", h.name, err)
		}
		codec, err := schema.CodecFor(em.Header.Get(schema.HeaderContentType))
		var ev schema.Event
		if err == nil {
			err = codec.Unmarshal(em.Data, &ev)
		}
		if err != nil || ev.Type != schema.EventResult || ev.Result == nil || ev.Result.Error == nil {
			t.Fatalf("%s: answer %+v (%v), want a result event", h.name, ev, err)
		}
		if got := ev.Result.Error.Code; got != h.code || ev.Result.JobID != id {
			t.Errorf("%s: result for %q with code %q (%s), want %q", h.name, ev.Result.JobID, got, ev.Result.Error.Message, h.code)
		}
		_ = sub.Unsubscribe()
		if res, err := c.Chat(ctx, longJob(2, 0), nil); err != nil || res.Worker != "sturdy" {
			t.Fatalf("%s: the next job: %+v, %v", h.name, res, err)
		}
	}

	// Terminated, never redelivered: each delivered once.
	cons, err := js.Consumer(ctx, topology.Config{}.WithDefaults().JobsStream(), topology.ConsumerName(schema.KindChat, "echo", schema.LaneNormal))
	if err != nil {
		t.Fatal(err)
	}
	// The worker acks a job after it answers it, so the last ack may still
	// be on its way when the answer arrives.
	wait.For(t, 20*time.Second, 10*time.Millisecond, func() error {
		ci, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if want := uint64(2*len(hostile) + 1); ci.NumRedelivered != 0 || ci.NumAckPending != 0 || ci.Delivered.Consumer != want {
			return fmt.Errorf("consumer delivered %d, redelivered %d, pending ack %d; want %d, 0, 0", ci.Delivered.Consumer, ci.NumRedelivered, ci.NumAckPending, want)
		}
		return nil
	})
	after := peakRSS(t, w.Process.Pid)
	t.Logf("worker peak RSS: %d MiB after one job, %d MiB after the hostile bodies (bound %d MiB)", before>>20, after>>20, maxWorkerHWM>>20)
	if after > maxWorkerHWM {
		t.Fatalf("worker peak RSS %d MiB, over the %d MiB bound", after>>20, maxWorkerHWM>>20)
	}
}

// peakRSS is the peak resident set size of process pid, in bytes (VmHWM).
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc to measure the worker's memory: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
