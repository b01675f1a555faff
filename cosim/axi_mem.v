// quattro_axi_mem: AXI4 slave memory model for co-simulation (testbench only).
//
// Plain Verilog-2005 (Verilator, Icarus -g2005). One read slave and one write
// slave on one memory of MEM_BYTES bytes, DATA_BYTES per beat, INCR bursts,
// in-order responses (the ID of each burst is echoed).
//
// Timing (cycle = one clk period; "in cycle c" = visible between two edges):
//   * an AR accepted in cycle a has its first R beat valid no earlier than
//     cycle a + LATENCY;
//   * after an R beat is taken (rvalid & rready) in cycle t, the next R beat
//     (same burst or the next one) is valid no earlier than cycle t + 1 + GAP;
//   * an R beat is valid in the first cycle both rules allow and the bursts
//     ahead of it are done; so bursts requested early stream back to back and
//     the latency is paid once: N bursts of B beats, requested one per cycle
//     from cycle a on, with rready held high, return their last beat in
//     cycle a + LATENCY + (N*B - 1)*(1 + GAP).
//   * a W beat is taken in any cycle its burst's AW is queued (the cycle after
//     the AW handshake at the earliest) and the B queue has room; the B
//     response of a burst whose last W beat was taken in cycle w is valid from
//     cycle w + WRITE_LATENCY on.
//   * arready / awready are high while fewer than QUEUE bursts are queued.
// All outputs come from registers (valid never depends on ready).
//
// Errors: a burst that reaches beyond MEM_BYTES, is not INCR, has a size other
// than the bus width, or crosses a 4 KB boundary is refused as a whole, with a
// $display naming its address: a read returns every beat with data 0 and
// rresp SLVERR, a write stores nothing and answers bresp SLVERR. A W beat whose
// wlast disagrees with the AW length is reported too (SLVERR; its bytes are
// still stored).
//
// Plusargs (read by the instances with FILES=1, the default):
//   +mem_init=<path>  $readmemh preload: one hex word of DATA_BYTES bytes per
//                     line, little-endian (byte 0 of memory is the lowest 8 bits
//                     of line 0); cosim/axi_mem.py write_init writes it.
//   +mem_log=<path>   every accepted W beat appends "<byte address> <data>
//                     <strb>" (hex, full width) and is flushed at once, so a
//                     testbench reads what the DUT wrote while it runs.
//   +mem_dump=<path>  on every cycle with `dump` high, $writememh of the whole
//                     memory (every W beat taken before that cycle included);
//                     cosim/axi_mem.py read_dump reads it.
//   +mem_gap=<n>      GAP for this run (default: the parameter), so that runs
//                     at full and at reduced bandwidth share one compiled model.
// The file is named for its role (cosim/axi_mem.py writes and reads its files).
/* verilator lint_off DECLFILENAME */
module quattro_axi_mem #(
    parameter ADDR_BITS = 64,
    parameter DATA_BYTES = 32,
    parameter MEM_BYTES = 1 << 20,
    parameter LATENCY = 64,
    parameter GAP = 0,
    parameter WRITE_LATENCY = LATENCY,
    parameter QUEUE = 32,
    // 0: ignore the +mem_* plusargs, so that a second model in the same
    // simulation neither loads nor overwrites the first one's files.
    parameter FILES = 1
) (
    input  wire                      clk,
    input  wire                      rst,
    input  wire                      dump,
    // AR
    input  wire [0:0]                s_arid,
    input  wire [ADDR_BITS-1:0]      s_araddr,
    input  wire [7:0]                s_arlen,
    input  wire [2:0]                s_arsize,
    input  wire [1:0]                s_arburst,
    input  wire                      s_arvalid,
    output wire                      s_arready,
    // R
    output wire [0:0]                s_rid,
    output wire [8*DATA_BYTES-1:0]   s_rdata,
    output wire [1:0]                s_rresp,
    output wire                      s_rlast,
    output wire                      s_rvalid,
    input  wire                      s_rready,
    // AW
    input  wire [0:0]                s_awid,
    input  wire [ADDR_BITS-1:0]      s_awaddr,
    input  wire [7:0]                s_awlen,
    input  wire [2:0]                s_awsize,
    input  wire [1:0]                s_awburst,
    input  wire                      s_awvalid,
    output wire                      s_awready,
    // W
    input  wire [8*DATA_BYTES-1:0]   s_wdata,
    input  wire [DATA_BYTES-1:0]     s_wstrb,
    input  wire                      s_wlast,
    input  wire                      s_wvalid,
    output wire                      s_wready,
    // B
    output wire [0:0]                s_bid,
    output wire [1:0]                s_bresp,
    output wire                      s_bvalid,
    input  wire                      s_bready
);
    localparam DW = 8 * DATA_BYTES;
    localparam WORDS = MEM_BYTES / DATA_BYTES;
    localparam SHIFT = $clog2(DATA_BYTES);
    localparam [ADDR_BITS-1:0] WORDS_A = WORDS;        // for address-wide compares
    localparam MW = (WORDS > 1) ? $clog2(WORDS) : 1;   // memory index bits
    localparam QB = $clog2(QUEUE);                      // queue pointer bits
    localparam [QB:0] QFULL = QUEUE;
    localparam [1:0] OKAY = 2'b00, SLVERR = 2'b10;
    localparam [1:0] INCR = 2'b01;
    localparam [2:0] SIZE = SHIFT[2:0];                     // arsize / awsize of a full beat

    // public: a C++ harness (cosim/core_device.py) loads and reads it in place
    reg [DW-1:0] mem [0:WORDS-1] /*verilator public_flat_rw*/;
    // Cycle counter: the due times below are absolute cycles.
    reg [63:0] now;

    // ------------------------------------------------------------ set-up
    integer i;
    integer log_fd;
    reg have_dump;
    reg [31:0] gap;                                    // GAP, or +mem_gap
    reg [8*1024-1:0] init_path, log_path, dump_path;
    initial begin
        if (LATENCY < 1 || WRITE_LATENCY < 1 || GAP < 0 || DATA_BYTES < 1
                || (DATA_BYTES & (DATA_BYTES - 1)) != 0 || MEM_BYTES % DATA_BYTES != 0
                || MEM_BYTES < DATA_BYTES || QUEUE < 16 || (QUEUE & (QUEUE - 1)) != 0) begin
            $display("quattro_axi_mem: bad parameters (need LATENCY >= 1, WRITE_LATENCY >= 1, GAP >= 0, DATA_BYTES a power of two, MEM_BYTES a multiple of DATA_BYTES, QUEUE a power of two >= 16)");
            $finish;
        end
        for (i = 0; i < WORDS; i = i + 1)
            mem[i] = {DW{1'b0}};
        log_fd = 0;
        have_dump = 1'b0;
        gap = GAP;
        if (FILES != 0) begin
            if ($value$plusargs("mem_gap=%d", gap) == 0)
                gap = GAP;
            if ($value$plusargs("mem_init=%s", init_path))
                $readmemh(init_path, mem);
            if ($value$plusargs("mem_log=%s", log_path)) begin
                log_fd = $fopen(log_path, "w");
                if (log_fd == 0)
                    $display("quattro_axi_mem: cannot open +mem_log file %0s", log_path);
            end
            have_dump = ($value$plusargs("mem_dump=%s", dump_path) != 0);
        end
    end

    always @(posedge clk) begin
        if (rst)
            now <= 64'd0;
        else
            now <= now + 64'd1;
    end

    // A burst is refused as a whole when it is not a plain INCR burst of full
    // beats inside 4 KB and inside the memory.
    function burst_bad;
        input [ADDR_BITS-1:0] addr;
        input [7:0] len;
        input [2:0] size;
        input [1:0] burst;
        reg [ADDR_BITS-1:0] last_word;
        reg [31:0] page_end;
        begin
            last_word = (addr >> SHIFT) + {{(ADDR_BITS-8){1'b0}}, len};
            page_end = {20'd0, addr[11:0]} + (({24'd0, len} + 32'd1) << SHIFT);
            burst_bad = burst != INCR || size != SIZE || page_end > 32'd4096
                        || (addr >> SHIFT) >= WORDS_A || last_word >= WORDS_A;
        end
    endfunction


    // ------------------------------------------------------------ reads
    // Queue of accepted AR bursts; the head one is being returned, beat r_beat.
    reg [ADDR_BITS-1:0] rq_addr [0:QUEUE-1];
    reg [7:0]           rq_len  [0:QUEUE-1];
    reg                 rq_id   [0:QUEUE-1];
    reg                 rq_bad  [0:QUEUE-1];
    reg [63:0]          rq_due  [0:QUEUE-1];   // first cycle its first beat may be valid
    reg [QB-1:0] rq_head, rq_tail;
    reg [QB:0]   rq_count;
    reg [7:0]    r_beat;
    reg [63:0]   r_next;                       // first cycle the next beat may be valid (GAP)

    wire ar_fire = s_arvalid && s_arready;
    wire r_fire = s_rvalid && s_rready;
    // Only the memory-index bits are read: burst_bad refused the burst at AR
    // time when any of its beats lies beyond the memory.
    /* verilator lint_off UNUSEDSIGNAL */
    wire [ADDR_BITS-1:0] r_word = (rq_addr[rq_head] >> SHIFT) + {{(ADDR_BITS-8){1'b0}}, r_beat};
    /* verilator lint_on UNUSEDSIGNAL */
    wire r_bad = rq_bad[rq_head];

    assign s_arready = !rst && rq_count != QFULL;
    assign s_rvalid = rq_count != 0 && now >= rq_due[rq_head] && now >= r_next;
    assign s_rid = rq_id[rq_head];
    assign s_rdata = r_bad ? {DW{1'b0}} : mem[r_word[MW-1:0]];
    assign s_rresp = r_bad ? SLVERR : OKAY;
    assign s_rlast = r_beat == rq_len[rq_head];

    wire r_pop = r_fire && s_rlast;

    always @(posedge clk) begin
        if (rst) begin
            rq_head <= {QB{1'b0}};
            rq_tail <= {QB{1'b0}};
            rq_count <= {(QB+1){1'b0}};
            r_beat <= 8'd0;
            r_next <= 64'd0;
        end else begin
            if (ar_fire) begin
                rq_addr[rq_tail] <= s_araddr;
                rq_len[rq_tail] <= s_arlen;
                rq_id[rq_tail] <= s_arid[0];
                rq_bad[rq_tail] <= burst_bad(s_araddr, s_arlen, s_arsize, s_arburst);
                rq_due[rq_tail] <= now + LATENCY;
                rq_tail <= rq_tail + 1'b1;
                if (burst_bad(s_araddr, s_arlen, s_arsize, s_arburst))
                    $display("quattro_axi_mem: read burst refused (SLVERR): address 0x%h, %0d beats, size %0d, burst type %0d; the memory holds %0d bytes in %0d-byte beats and takes INCR bursts of full beats inside 4 KB pages",
                             s_araddr, s_arlen + 9'd1, s_arsize, s_arburst, MEM_BYTES, DATA_BYTES);
            end
            if (r_fire) begin
                r_next <= now + 64'd1 + {32'd0, gap};
                r_beat <= s_rlast ? 8'd0 : r_beat + 8'd1;
            end
            if (r_pop)
                rq_head <= rq_head + 1'b1;
            if (ar_fire && !r_pop)
                rq_count <= rq_count + 1'b1;
            else if (r_pop && !ar_fire)
                rq_count <= rq_count - 1'b1;
        end
    end

    // ------------------------------------------------------------ writes
    // Queue of accepted AW bursts; W beats go to the head one, beat w_beat.
    reg [ADDR_BITS-1:0] wq_addr [0:QUEUE-1];
    reg [7:0]           wq_len  [0:QUEUE-1];
    reg                 wq_id   [0:QUEUE-1];
    reg                 wq_bad  [0:QUEUE-1];
    reg [QB-1:0] wq_head, wq_tail;
    reg [QB:0]   wq_count;
    reg [7:0]    w_beat;
    reg          w_err;                        // a wlast mismatch earlier in this burst
    // Queue of B responses, each due WRITE_LATENCY cycles after its last W beat.
    reg                 bq_id   [0:QUEUE-1];
    reg [1:0]           bq_resp [0:QUEUE-1];
    reg [63:0]          bq_due  [0:QUEUE-1];
    reg [QB-1:0] bq_head, bq_tail;
    reg [QB:0]   bq_count;

    wire aw_fire = s_awvalid && s_awready;
    wire w_fire = s_wvalid && s_wready;
    wire b_fire = s_bvalid && s_bready;
    wire [ADDR_BITS-1:0] w_word = (wq_addr[wq_head] >> SHIFT) + {{(ADDR_BITS-8){1'b0}}, w_beat};
    wire w_end = w_beat == wq_len[wq_head];
    wire w_bad = wq_bad[wq_head];
    wire w_last_err = s_wlast != w_end;
    wire [DW-1:0] w_mask;                      // wstrb, one bit per byte -> per bit
    genvar g;
    generate
        for (g = 0; g < DATA_BYTES; g = g + 1) begin : strb_mask
            assign w_mask[8*g +: 8] = {8{s_wstrb[g]}};
        end
    endgenerate

    assign s_awready = !rst && wq_count != QFULL;
    assign s_wready = !rst && wq_count != 0 && bq_count != QFULL;
    assign s_bvalid = bq_count != 0 && now >= bq_due[bq_head];
    assign s_bid = bq_id[bq_head];
    assign s_bresp = bq_resp[bq_head];

    always @(posedge clk) begin
        if (rst) begin
            wq_head <= {QB{1'b0}};
            wq_tail <= {QB{1'b0}};
            wq_count <= {(QB+1){1'b0}};
            bq_head <= {QB{1'b0}};
            bq_tail <= {QB{1'b0}};
            bq_count <= {(QB+1){1'b0}};
            w_beat <= 8'd0;
            w_err <= 1'b0;
        end else begin
            if (aw_fire) begin
                wq_addr[wq_tail] <= s_awaddr;
                wq_len[wq_tail] <= s_awlen;
                wq_id[wq_tail] <= s_awid[0];
                wq_bad[wq_tail] <= burst_bad(s_awaddr, s_awlen, s_awsize, s_awburst);
                wq_tail <= wq_tail + 1'b1;
                if (burst_bad(s_awaddr, s_awlen, s_awsize, s_awburst))
                    $display("quattro_axi_mem: write burst refused (SLVERR): address 0x%h, %0d beats, size %0d, burst type %0d; the memory holds %0d bytes in %0d-byte beats and takes INCR bursts of full beats inside 4 KB pages",
                             s_awaddr, s_awlen + 9'd1, s_awsize, s_awburst, MEM_BYTES, DATA_BYTES);
            end
            if (w_fire) begin
                if (!w_bad)
                    mem[w_word[MW-1:0]] <= (mem[w_word[MW-1:0]] & ~w_mask) | (s_wdata & w_mask);
                if (log_fd != 0) begin
                    $fwrite(log_fd, "%h %h %h\n", w_word << SHIFT, s_wdata, s_wstrb);
                    $fflush(log_fd);
                end
                if (w_last_err)
                    $display("quattro_axi_mem: wlast=%0d on beat %0d of the %0d-beat write burst at 0x%h (SLVERR)",
                             s_wlast, w_beat, wq_len[wq_head] + 9'd1, wq_addr[wq_head]);
                w_beat <= w_end ? 8'd0 : w_beat + 8'd1;
                w_err <= w_end ? 1'b0 : (w_err || w_last_err);
            end
            // The burst's last W beat: its B response is queued, its AW popped.
            if (w_fire && w_end) begin
                bq_id[bq_tail] <= wq_id[wq_head];
                bq_resp[bq_tail] <= (w_bad || w_err || w_last_err) ? SLVERR : OKAY;
                bq_due[bq_tail] <= now + WRITE_LATENCY;
                bq_tail <= bq_tail + 1'b1;
                wq_head <= wq_head + 1'b1;
            end
            if (aw_fire && !(w_fire && w_end))
                wq_count <= wq_count + 1'b1;
            else if ((w_fire && w_end) && !aw_fire)
                wq_count <= wq_count - 1'b1;
            if (b_fire)
                bq_head <= bq_head + 1'b1;
            if ((w_fire && w_end) && !b_fire)
                bq_count <= bq_count + 1'b1;
            else if (b_fire && !(w_fire && w_end))
                bq_count <= bq_count - 1'b1;
        end
    end

    // ------------------------------------------------------------ dump
    always @(posedge clk) begin
        if (dump && have_dump)
            $writememh(dump_path, mem);
    end
endmodule
