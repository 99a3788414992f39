// vcsim for the vkp lab: govmomi 0.24.2's vCenter simulator with the inventory vkp expects
// and the few behaviours where 0.24.2 differs from vCenter in ways a provisioner depends on.
//
// Build (Debian: golang-go, golang-github-vmware-govmomi-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o vcsim main.go
//
// Every fix lives in an HTTP layer in front of the simulator's /sdk handler, because the
// simulator dispatches SOAP calls by reflection on its own unexported-method types and
// cannot be subclassed from outside its package.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	templateName = "debian-12"
	networkName  = "VM Network"
	// 0.24.2 predates debian11/12 guest ids in its validation list; debian10_64Guest is the
	// newest Debian id it accepts.
	templateGuestID = "debian10_64Guest"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func usageError(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vcsim: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8989", "address to serve the SDK on")
	hosts := flag.Int("hosts", 3, "ESXi hosts in the cluster")
	certFile := flag.String("tls-cert", "", "PEM certificate to serve HTTPS with")
	keyFile := flag.String("tls-key", "", "PEM private key of -tls-cert")
	username := flag.String("username", "", "the only user name Login accepts")
	passwordFile := flag.String("password-file", "", "file holding the only password Login accepts")
	readyFile := flag.String("ready-file", "", "write the SDK URL here once serving")
	var delays, fails listFlag
	flag.Var(&delays, "delay", "METHOD=MS: delay every call of METHOD (repeatable)")
	flag.Var(&fails, "fail", "METHOD:K: the K-th call of METHOD fails (repeatable)")
	faultsDir := flag.String("faults-dir", "", "directory to take faults armed at run time from (see injector)")
	flag.Parse()

	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("vcsim: ")

	if *hosts < 1 {
		usageError("-hosts must be at least 1")
	}
	if *certFile == "" || *keyFile == "" {
		usageError("-tls-cert and -tls-key are required")
	}
	if *username == "" || *passwordFile == "" {
		usageError("-username and -password-file are required")
	}
	raw, err := ioutil.ReadFile(*passwordFile)
	if err != nil {
		usageError("reading -password-file: %v", err)
	}
	password := strings.TrimRight(string(raw), "\r\n")
	if password == "" {
		usageError("-password-file is empty")
	}

	methodDelay := map[string]int{}
	for _, d := range delays {
		i := strings.LastIndex(d, "=")
		ms, err := strconv.Atoi(d[i+1:])
		if i <= 0 || err != nil || ms < 0 {
			usageError("-delay %q: want METHOD=MILLISECONDS", d)
		}
		methodDelay[d[:i]] = ms
	}
	inject := newInjector(*faultsDir)
	for _, f := range fails {
		i := strings.LastIndex(f, ":")
		k, err := strconv.Atoi(f[i+1:])
		if i <= 0 || err != nil || k < 1 {
			usageError("-fail %q: want METHOD:K with K >= 1", f)
		}
		inject.add(f[:i], k)
	}
	inject.saveLocked()
	if *faultsDir != "" {
		// Arming is acknowledged (the file taken) even while no client calls.
		go func() {
			for range time.Tick(100 * time.Millisecond) {
				inject.poll()
			}
		}()
	}

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		usageError("loading -tls-cert/-tls-key: %v", err)
	}

	// Bind before building the model so a taken port fails fast and says so.
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vcsim: cannot listen on %s: %v\n", *listen, err)
		os.Exit(3)
	}

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = *hosts
	model.Host = 0
	model.Machine = 0
	model.Portgroup = 0 // NICs use the standard "VM Network" port group every host has
	model.Datastore = 1
	model.Autostart = false
	if err := model.Create(); err != nil {
		log.Fatalf("creating the model: %v", err)
	}
	defer model.Remove()

	if err := buildInventory(model.Service); err != nil {
		log.Fatalf("creating the %s template: %v", templateName, err)
	}
	// Model.Create points the service at this struct, so setting it after the inventory is
	// built keeps the setup calls above undelayed.
	model.DelayConfig.MethodDelay = methodDelay

	svc := model.Service
	svc.Listen = &url.URL{Scheme: "https", Host: ln.Addr().String(), Path: "/sdk",
		User: url.UserPassword(*username, password)}
	svc.RegisterSDK(simulator.Map)
	svc.ServeMux.HandleFunc(simulator.Map.Path+"/vimServiceVersions.xml", svc.ServiceVersions)
	svc.ServeMux.HandleFunc("/about", svc.About)
	simulator.Map.SessionManager().ServiceHostName = ln.Addr().String()

	front := &frontend{next: svc.ServeMux, inject: inject, delays: methodDelay}
	server := &http.Server{
		Handler:   front,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
		ErrorLog:  log.New(os.Stderr, "vcsim: http: ", log.LstdFlags),
	}
	sdkURL := "https://" + ln.Addr().String() + "/sdk"

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		log.Print("stopping")
		_ = server.Close()
	}()

	if *readyFile != "" {
		// Written before Serve, but the listener is already bound, so connections queue.
		if err := writeAtomic(*readyFile, sdkURL+"\n"); err != nil {
			log.Fatalf("writing -ready-file: %v", err)
		}
	}
	log.Printf("serving %s (%d hosts, user %s)", sdkURL, *hosts, *username)
	if err := server.ServeTLS(ln, "", ""); err != nil && err != http.ErrServerClosed {
		log.Fatalf("serve: %v", err)
	}
}

func writeAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := ioutil.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// buildInventory adds what the model cannot express: the template VM with a snapshot.
func buildInventory(svc *simulator.Service) error {
	ctx := context.Background()
	c, err := vim25.NewClient(ctx, svc)
	if err != nil {
		return err
	}
	finder := find.NewFinder(c, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return err
	}
	cluster, err := finder.DefaultClusterComputeResource(ctx)
	if err != nil {
		return err
	}
	pool, err := cluster.ResourcePool(ctx)
	if err != nil {
		return err
	}
	hosts, err := cluster.Hosts(ctx)
	if err != nil || len(hosts) == 0 {
		return fmt.Errorf("cluster hosts: %v", err)
	}
	ds, err := finder.DefaultDatastore(ctx)
	if err != nil {
		return err
	}
	network, err := finder.Network(ctx, networkName)
	if err != nil {
		return err
	}
	backing, err := network.EthernetCardBackingInfo(ctx)
	if err != nil {
		return err
	}

	shareAcrossHosts(hosts, ds.Reference(), network.Reference())

	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return err
	}
	devices = append(devices, scsi)
	disk := devices.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(),
		fmt.Sprintf("[%s] %s/%s.vmdk", ds.Name(), templateName, templateName))
	disk.CapacityInKB = 10 * 1024 * 1024
	devices = append(devices, disk)
	nic, err := devices.CreateEthernetCard("vmxnet3", backing)
	if err != nil {
		return err
	}
	card := nic.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	card.AddressType = string(types.VirtualEthernetCardMacTypeAssigned)
	card.MacAddress = newMAC()
	devices = append(devices, nic)

	spec := types.VirtualMachineConfigSpec{
		Name:     templateName,
		GuestId:  templateGuestID,
		NumCPUs:  2,
		MemoryMB: 2048,
		Files:    &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", ds.Name())},
	}
	spec.DeviceChange, err = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return err
	}
	task, err := folders.VmFolder.CreateVM(ctx, spec, pool, hosts[0])
	if err != nil {
		return err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return err
	}
	vm := object.NewVirtualMachine(c, info.Result.(types.ManagedObjectReference))
	task, err = vm.CreateSnapshot(ctx, "base", "linked clones start here", false, false)
	if err != nil {
		return err
	}
	if err = task.Wait(ctx); err != nil {
		return err
	}
	if err = vm.MarkAsTemplate(ctx); err != nil {
		return err
	}
	// A VM that never ran has no Tools state in vCenter; 0.24.2 pre-fills guest.net.
	syncGuest(simulator.Map.Get(vm.Reference()).(*simulator.VirtualMachine), false)
	return nil
}

// shareAcrossHosts mounts the datastore on every host and lists every host on the port group.
// 0.24.2 makes one Datastore object per host under the same reference, so the last host to
// mount it wins, and it never fills in Network.host.
func shareAcrossHosts(hosts []*object.HostSystem, dsRef, netRef types.ManagedObjectReference) {
	var mounts []types.DatastoreHostMount
	var refs []types.ManagedObjectReference
	for _, h := range hosts {
		refs = append(refs, h.Reference())
		mounts = append(mounts, types.DatastoreHostMount{
			Key: h.Reference(),
			MountInfo: types.HostMountInfo{
				Path:       simulator.Map.Get(dsRef).(*simulator.Datastore).Info.GetDatastoreInfo().Url,
				AccessMode: string(types.HostMountModeReadWrite),
				Mounted:    types.NewBool(true),
				Accessible: types.NewBool(true),
			},
		})
		host := simulator.Map.Get(h.Reference()).(*simulator.HostSystem)
		simulator.Map.AddReference(host, &host.Datastore, dsRef)
		simulator.Map.AddReference(host, &host.Network, netRef)
	}
	ds := simulator.Map.Get(dsRef).(*simulator.Datastore)
	simulator.Map.WithLock(ds, func() {
		simulator.Map.Update(ds, []types.PropertyChange{{Name: "host", Val: mounts}})
	})
	net := simulator.Map.Get(netRef)
	simulator.Map.WithLock(net, func() {
		simulator.Map.Update(net, []types.PropertyChange{{Name: "host", Val: refs}})
	})
}

// ---- MAC addresses ----------------------------------------------------------------------

var macs = struct {
	sync.Mutex
	used map[string]bool
}{used: map[string]bool{}}

// newMAC returns an unused address from vCenter's own range (00:50:56:80-bf:xx:xx).
func newMAC() string {
	macs.Lock()
	defer macs.Unlock()
	for {
		b := make([]byte, 3)
		if _, err := rand.Read(b); err != nil {
			panic(err)
		}
		mac := fmt.Sprintf("00:50:56:%02x:%02x:%02x", 0x80|(b[0]&0x3f), b[1], b[2])
		if !macs.used[mac] {
			macs.used[mac] = true
			return mac
		}
	}
}

// ---- fault injection ----------------------------------------------------------------------

// Faults are armed at start (-fail) or while running, through files dropped into -faults-dir:
// the lab's own run directory (0700, root's), so arming takes local root and no network
// endpoint exists for it. A writer puts "METHOD K" lines (or "clear") into NAME.fault by
// renaming a finished file into place; the simulator claims each file by renaming it, applies
// it and removes it, so a file is applied exactly once and a writer that sees its file gone
// knows it was taken. What is armed and what fired is kept in DIR/state.json.

type firedFault struct {
	Method string    `json:"method"`
	Call   int       `json:"call"`
	At     time.Time `json:"at"`
}

type pendingFault struct {
	Method string `json:"method"`
	Call   int    `json:"call"` // the call number of Method that fails
}

type injector struct {
	mu    sync.Mutex
	calls map[string]int
	fail  map[string]map[int]bool
	fired []firedFault
	dir   string // "" when runtime arming is off
}

func newInjector(dir string) *injector {
	return &injector{calls: map[string]int{}, fail: map[string]map[int]bool{}, dir: dir}
}

// add arms method to fail on its k-th call from now. Callers hold mu (or run before serving).
func (i *injector) add(method string, k int) {
	if i.fail[method] == nil {
		i.fail[method] = map[int]bool{}
	}
	i.fail[method][i.calls[method]+k] = true
}

// next counts a call of method and says whether it is one that must fail.
func (i *injector) next(method string) (int, bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.pollLocked()
	// Every call is counted, armed or not, so that "K calls from now" means the same whenever
	// a fault is armed.
	i.calls[method]++
	n := i.calls[method]
	if !i.fail[method][n] {
		return n, false
	}
	delete(i.fail[method], n)
	i.fired = append(i.fired, firedFault{Method: method, Call: n, At: time.Now()})
	i.saveLocked()
	return n, true
}

func (i *injector) poll() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.pollLocked()
}

// pollLocked applies the fault files waiting in dir. A directory read per SOAP call costs
// microseconds, and unlike an mtime check it cannot miss a file renamed in within the same
// timestamp tick as the last look.
func (i *injector) pollLocked() {
	if i.dir == "" {
		return
	}
	entries, err := ioutil.ReadDir(i.dir)
	if err != nil {
		return
	}
	changed := false
	for _, e := range entries {
		name := e.Name()
		if !e.Mode().IsRegular() || !strings.HasSuffix(name, ".fault") {
			continue
		}
		path := filepath.Join(i.dir, name)
		taken := path + ".taken"
		if os.Rename(path, taken) != nil {
			continue // withdrawn by its writer meanwhile
		}
		raw, err := ioutil.ReadFile(taken)
		_ = os.Remove(taken)
		if err != nil {
			log.Printf("fault file %s: %v", name, err)
			continue
		}
		for _, line := range strings.Split(string(raw), "\n") {
			fields := strings.Fields(line)
			switch {
			case len(fields) == 0:
			case len(fields) == 1 && fields[0] == "clear":
				i.fail = map[string]map[int]bool{}
				log.Print("vkp lab: armed faults cleared")
			case len(fields) == 2 && methodRe.MatchString(fields[0]):
				k, err := strconv.Atoi(fields[1])
				if err != nil || k < 1 {
					log.Printf("fault file %s: ignoring %q: want METHOD K with K >= 1", name, line)
					continue
				}
				i.add(fields[0], k)
				log.Printf("vkp lab: armed fault: %s call %d (%d so far)", fields[0],
					i.calls[fields[0]]+k, i.calls[fields[0]])
			default:
				log.Printf("fault file %s: ignoring %q: want METHOD K or clear", name, line)
				continue
			}
			changed = true
		}
	}
	if changed {
		i.saveLocked()
	}
}

func (i *injector) saveLocked() {
	if i.dir == "" {
		return
	}
	state := struct {
		Pending []pendingFault `json:"pending"`
		Fired   []firedFault   `json:"fired"`
		Calls   map[string]int `json:"calls"`
	}{Pending: []pendingFault{}, Fired: i.fired, Calls: i.calls}
	for method, calls := range i.fail {
		for n := range calls {
			state.Pending = append(state.Pending, pendingFault{Method: method, Call: n})
		}
	}
	sort.Slice(state.Pending, func(a, b int) bool {
		pa, pb := state.Pending[a], state.Pending[b]
		return pa.Method < pb.Method || (pa.Method == pb.Method && pa.Call < pb.Call)
	})
	if state.Fired == nil {
		state.Fired = []firedFault{}
	}
	raw, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		log.Printf("fault state: %v", err)
		return
	}
	if err := writeAtomic(filepath.Join(i.dir, "state.json"), string(raw)+"\n"); err != nil {
		log.Printf("fault state: %v", err)
	}
}

var methodRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)

// isToolsReport says whether a call is the lab hypervisor reporting a guest's address, as
// VMware Tools would. Tools does not go through the API a client uses, so a fault armed for
// a client's ReconfigVM_Task must neither count nor fail it (a failed report would leave a
// booted VM without an address forever).
func isToolsReport(method *simulator.Method) bool {
	req, ok := method.Body.(*types.ReconfigVM_Task)
	if !ok || len(req.Spec.ExtraConfig) == 0 {
		return false
	}
	for _, o := range req.Spec.ExtraConfig {
		if !strings.HasPrefix(o.GetOptionValue().Key, "SET.guest.") {
			return false
		}
	}
	return true
}

// ---- the HTTP front ---------------------------------------------------------------------

type frontend struct {
	next   http.Handler
	inject *injector
	delays map[string]int
}

var returnvalRe = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)

func (f *frontend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != simulator.Map.Path {
		f.next.ServeHTTP(w, r)
		return
	}
	body, err := ioutil.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, "reading request", http.StatusBadRequest)
		return
	}
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		// The simulator answers undecodable requests with its own fault.
		f.forward(w, r, body, nil)
		return
	}

	if isToolsReport(method) {
		f.forward(w, r, body, func(task *simulator.Task) {
			afterReconfigure(method.Body.(*types.ReconfigVM_Task), task)
		})
		return
	}
	if n, fail := f.inject.next(method.Name); fail {
		if d := f.delays[method.Name]; d > 0 {
			time.Sleep(time.Duration(d) * time.Millisecond)
		}
		msg := fmt.Sprintf("vkp lab: injected fault: %s call %d", method.Name, n)
		log.Print(msg)
		injectedFault(w, method, msg)
		return
	}

	switch req := method.Body.(type) {
	case *types.CloneVM_Task:
		f.forward(w, r, body, func(task *simulator.Task) { repairClone(req, task) })
	case *types.ReconfigVM_Task:
		f.forward(w, r, body, func(task *simulator.Task) { afterReconfigure(req, task) })
	case *types.PowerOnVM_Task:
		f.forward(w, r, body, func(*simulator.Task) { afterPowerOn(req.This) })
	case *types.PowerOffVM_Task:
		f.forward(w, r, body, func(task *simulator.Task) { afterPowerOff(req.This, task) })
	case *types.ShutdownGuest:
		f.forward(w, r, body, func(*simulator.Task) { afterPowerOff(req.This, nil) })
	case *types.CustomizeVM_Task:
		ensureGuestNics(req.This)
		f.forward(w, r, body, nil)
	default:
		if method.Name == "Fetch" {
			f.fetch(w, r, body, method)
			return
		}
		f.forward(w, r, body, nil)
	}
}

// forward runs the request through the simulator into a buffer, so a repair can finish
// before the client sees the response, and a simulator panic becomes a SOAP fault instead
// of a dropped connection. after gets the returned task (nil if none, or on a fault).
func (f *frontend) forward(w http.ResponseWriter, r *http.Request, body []byte,
	after func(*simulator.Task)) {
	rec := httptest.NewRecorder()
	r.Body = ioutil.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	if perr := serveRecovered(f.next, rec, r); perr != nil {
		log.Printf("simulator panic: %v", perr)
		writeFault(w, "SystemError", fmt.Sprintf("vcsim internal error: %v", perr),
			"<reason>vcsim internal error</reason>")
		return
	}
	if after != nil && rec.Code == http.StatusOK {
		var task *simulator.Task
		if m := returnvalRe.FindSubmatch(rec.Body.Bytes()); m != nil {
			ref := types.ManagedObjectReference{Type: "Task", Value: string(m[1])}
			task, _ = simulator.Map.Get(ref).(*simulator.Task)
		}
		// Tasks finish before 0.24.2 answers the call that started them.
		if task == nil || task.Info.State == types.TaskInfoStateSuccess {
			after(task)
		}
	}
	copyResponse(w, rec)
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func serveRecovered(h http.Handler, w http.ResponseWriter, r *http.Request) (perr interface{}) {
	defer func() { perr = recover() }()
	h.ServeHTTP(w, r)
	return nil
}

// fetch answers an unset property with an empty value, as vCenter does; 0.24.2 panics while
// encoding the nil value and drops the connection (pyvmomi reads every property with Fetch).
func (f *frontend) fetch(w http.ResponseWriter, r *http.Request, body []byte, method *simulator.Method) {
	prop := reflect.ValueOf(method.Body).Elem().FieldByName("Prop").String()
	if prop != "" && isUnset(method.This, prop) {
		writeResponse(w, "FetchResponse", "")
		return
	}
	// Objects kept per session (SessionManager, views, collectors) are not in the global
	// registry isUnset reads, so a panic here is the same unset-property case.
	rec := httptest.NewRecorder()
	r.Body = ioutil.NopCloser(bytes.NewReader(body))
	if perr := serveRecovered(f.next, rec, r); perr != nil {
		log.Printf("Fetch %s %s: simulator panic (%v): answering unset", method.This, prop, perr)
		writeResponse(w, "FetchResponse", "")
		return
	}
	copyResponse(w, rec)
}

// isUnset reports whether path names a nil or empty field of an inventory object; false when
// the object or field is unknown, so the simulator answers those with its own faults.
func isUnset(ref types.ManagedObjectReference, path string) bool {
	obj, ok := simulator.Map.Get(ref).(mo.Entity)
	if !ok {
		return false
	}
	unset := false
	simulator.Map.WithLock(obj, func() {
		v := reflect.ValueOf(obj)
		for _, name := range strings.Split(path, ".") {
			for v.Kind() == reflect.Ptr || v.Kind() == reflect.Interface {
				if v.IsNil() {
					unset = true
					return
				}
				v = v.Elem()
			}
			if v.Kind() != reflect.Struct {
				return
			}
			v = v.FieldByName(strings.ToUpper(name[:1]) + name[1:])
			if !v.IsValid() {
				return
			}
		}
		switch v.Kind() {
		case reflect.Ptr, reflect.Interface, reflect.Map:
			unset = v.IsNil()
		case reflect.Slice:
			unset = v.Len() == 0
		case reflect.String:
			unset = v.Len() == 0
		}
	})
	return unset
}

const envelopeHead = `<?xml version="1.0" encoding="UTF-8"?>` +
	`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" ` +
	`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ` +
	`xmlns:xsd="http://www.w3.org/2001/XMLSchema" ` +
	`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`
const envelopeTail = `</soapenv:Body></soapenv:Envelope>`

func writeResponse(w http.ResponseWriter, element, inner string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, `%s<%s xmlns="urn:vim25">%s</%s>%s`, envelopeHead, element, inner, element, envelopeTail)
}

func writeFault(w http.ResponseWriter, kind, msg, detail string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `%s<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring>`+
		`<detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault>%s`,
		envelopeHead, escape(msg), kind, kind, detail, kind, envelopeTail)
}

func escape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// injectedFault answers a *_Task call with a task that ended in SystemError, as vCenter
// reports a failed operation, and any other call with a SystemError SOAP fault.
func injectedFault(w http.ResponseWriter, method *simulator.Method, msg string) {
	entity := simulator.Map.Get(method.This)
	if !strings.HasSuffix(method.Name, "_Task") || entity == nil {
		writeFault(w, "SystemError", msg, "<reason>"+escape(msg)+"</reason>")
		return
	}
	task := simulator.CreateTask(entity, strings.TrimSuffix(method.Name, "_Task")+"Task", nil)
	fault := &types.SystemError{Reason: msg}
	fault.FaultMessage = []types.LocalizableMessage{{Key: "vkp.lab.injectedFault", Message: msg}}
	now := time.Now()
	simulator.Map.Update(task, []types.PropertyChange{
		{Name: "info.startTime", Val: now},
		{Name: "info.completeTime", Val: now},
		{Name: "info.state", Val: types.TaskInfoStateError},
		{Name: "info.error", Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}},
	})
	writeResponse(w, method.Name+"Response", `<returnval type="Task">`+task.Self.Value+`</returnval>`)
}

// ---- clone repair -----------------------------------------------------------------------

// repairClone makes a finished clone look like vCenter's: its own device objects, a new MAC
// on every NIC that is not manually addressed, and the host the spec asked for.
func repairClone(req *types.CloneVM_Task, task *simulator.Task) {
	if task == nil {
		return
	}
	ref, ok := task.Info.Result.(types.ManagedObjectReference)
	if !ok {
		return
	}
	clone, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	source, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		return
	}

	// 0.24.2 hands the source's own device objects to the clone and rewrites the source's
	// disk backing to the clone's file. Under the source's lock no other clone of it runs,
	// so the copies taken here are not being written to.
	var devices []types.BaseVirtualDevice
	simulator.Map.WithLock(source, func() {
		for _, d := range clone.Config.Hardware.Device {
			devices = append(devices, deepCopy(d).(types.BaseVirtualDevice))
		}
		restoreDiskFiles(source.Config.Hardware.Device, source.Layout)
	})

	simulator.Map.WithLock(clone, func() {
		restoreDiskFiles(devices, clone.Layout)
		for _, d := range devices {
			nic, ok := d.(types.BaseVirtualEthernetCard)
			if !ok {
				continue
			}
			card := nic.GetVirtualEthernetCard()
			if card.AddressType == string(types.VirtualEthernetCardMacTypeManual) {
				continue
			}
			card.MacAddress = newMAC()
			card.AddressType = string(types.VirtualEthernetCardMacTypeAssigned)
		}
		simulator.Map.Update(clone, []types.PropertyChange{
			{Name: "config.hardware.device", Val: devices},
		})
		syncGuest(clone, clone.Guest != nil && clone.Guest.IpAddress != "")
	})

	if h := req.Spec.Location.Host; h != nil {
		moveToHost(clone, *h)
	}
}

// restoreDiskFiles puts each disk's file name back from the VM's disk layout, which 0.24.2
// records from the backing at the time the disk was added and never shares between VMs.
func restoreDiskFiles(devices []types.BaseVirtualDevice, layout *types.VirtualMachineFileLayout) {
	if layout == nil {
		return
	}
	for _, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		for _, l := range layout.Disk {
			if l.Key == disk.Key && len(l.DiskFile) > 0 {
				b.FileName = l.DiskFile[0]
			}
		}
	}
}

func moveToHost(vm *simulator.VirtualMachine, hostRef types.ManagedObjectReference) {
	host, ok := simulator.Map.Get(hostRef).(*simulator.HostSystem)
	if !ok {
		return
	}
	var old types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		old = *vm.Runtime.Host
		if old == hostRef {
			return
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "runtime.host", Val: hostRef},
			{Name: "summary.runtime.host", Val: hostRef},
		})
	})
	if old == hostRef {
		return
	}
	// RemoveReference/AddReference take the host's lock themselves.
	if prev, ok := simulator.Map.Get(old).(*simulator.HostSystem); ok {
		simulator.Map.RemoveReference(prev, &prev.Vm, vm.Self)
	}
	simulator.Map.AddReference(host, &host.Vm, vm.Self)
}

// deepCopy copies exported fields recursively; unexported ones (time.Time's) are copied by
// value, which is all the vim types need.
func deepCopy(src interface{}) interface{} {
	return copyValue(reflect.ValueOf(src)).Interface()
}

func copyValue(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Ptr:
		if v.IsNil() {
			return v
		}
		n := reflect.New(v.Elem().Type())
		n.Elem().Set(copyValue(v.Elem()))
		return n
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		n := reflect.New(v.Type()).Elem()
		n.Set(copyValue(v.Elem()))
		return n
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		n := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			n.Index(i).Set(copyValue(v.Index(i)))
		}
		return n
	case reflect.Struct:
		n := reflect.New(v.Type()).Elem()
		n.Set(v)
		for i := 0; i < v.NumField(); i++ {
			if n.Field(i).CanSet() {
				n.Field(i).Set(copyValue(v.Field(i)))
			}
		}
		return n
	}
	return v
}

// ---- guest info, as VMware Tools would report it ----------------------------------------

// afterReconfigure applies SET.guest.* keys the way Tools would report them, and keeps
// config.extraConfig one value per key with empty values removed, as vCenter does.
func afterReconfigure(req *types.ReconfigVM_Task, _ *simulator.Task) {
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	guestKeys := false
	for _, o := range req.Spec.ExtraConfig {
		switch o.GetOptionValue().Key {
		case "SET.guest.ipAddress", "ip0", "SET.guest.hostName":
			guestKeys = true
		}
	}
	simulator.Map.WithLock(vm, func() {
		if len(req.Spec.ExtraConfig) > 0 {
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "config.extraConfig", Val: dedupeExtraConfig(vm.Config.ExtraConfig)},
			})
		}
		if guestKeys {
			syncGuest(vm, vm.Guest.IpAddress != "")
		}
	})
}

func dedupeExtraConfig(in []types.BaseOptionValue) []types.BaseOptionValue {
	last := map[string]int{}
	for i, o := range in {
		last[o.GetOptionValue().Key] = i
	}
	out := make([]types.BaseOptionValue, 0, len(in))
	for i, o := range in {
		v := o.GetOptionValue()
		if last[v.Key] != i {
			continue
		}
		if s, ok := v.Value.(string); ok && s == "" {
			continue
		}
		out = append(out, o)
	}
	return out
}

// afterPowerOn stamps runtime.bootTime, as vSphere does at every power-on: a VM powered off and
// on again between two looks of a watcher is still seen to have booted anew.
func afterPowerOn(ref types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
			now := time.Now()
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "runtime.bootTime", Val: &now}})
		}
	})
}

func afterPowerOff(ref types.ManagedObjectReference, _ *simulator.Task) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff {
			syncGuest(vm, false)
		}
	})
}

// syncGuest sets guest.net, guest.toolsRunningStatus and guest.guestState from guest.ipAddress
// (running == Tools report an address). Callers hold the VM's lock.
func syncGuest(vm *simulator.VirtualMachine, running bool) {
	ip := ""
	if running {
		ip = vm.Guest.IpAddress
	}
	net := []types.GuestNicInfo{}
	tools := string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)
	state := "notRunning"
	toolsStatus := types.VirtualMachineToolsStatusToolsNotRunning
	if running {
		tools = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
		state = "running"
		toolsStatus = types.VirtualMachineToolsStatusToolsOk
		if nics := guestNics(vm); len(nics) > 0 {
			nics[0].IpAddress = []string{ip}
			nics[0].IpConfig = &types.NetIpConfigInfo{IpAddress: []types.NetIpConfigInfoIpAddress{{
				IpAddress: ip, State: string(types.NetIpConfigInfoIpAddressStatusPreferred),
			}}}
			net = nics[:1]
		}
	}
	changes := []types.PropertyChange{
		{Name: "guest.net", Val: net},
		{Name: "guest.ipAddress", Val: ip},
		{Name: "summary.guest.ipAddress", Val: ip},
		{Name: "guest.toolsRunningStatus", Val: tools},
		{Name: "summary.guest.toolsRunningStatus", Val: tools},
		{Name: "guest.toolsStatus", Val: toolsStatus},
		{Name: "summary.guest.toolsStatus", Val: toolsStatus},
		{Name: "guest.guestState", Val: state},
	}
	simulator.Map.Update(vm, changes)
}

// guestNics describes each NIC as Tools would: its MAC, port group name and link state.
func guestNics(vm *simulator.VirtualMachine) []types.GuestNicInfo {
	var nics []types.GuestNicInfo
	for _, d := range vm.Config.Hardware.Device {
		nic, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		card := nic.GetVirtualEthernetCard()
		name := ""
		if b, ok := card.Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok {
			name = b.DeviceName
		}
		connected := card.Connectable == nil || card.Connectable.Connected ||
			card.Connectable.StartConnected
		nics = append(nics, types.GuestNicInfo{
			Network:        name,
			MacAddress:     card.MacAddress,
			Connected:      connected,
			DeviceConfigId: card.Key,
		})
	}
	return nics
}

// ensureGuestNics gives 0.24.2's guest customization the per-NIC guest.net entries it
// indexes (it panics without them) when a powered-off VM has none, as vCenter reports.
func ensureGuestNics(ref types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Guest != nil && len(vm.Guest.Net) == 0 && vm.Config != nil {
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "guest.net", Val: guestNics(vm)}})
		}
	})
}
