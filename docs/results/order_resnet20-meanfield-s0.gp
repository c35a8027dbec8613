# Written by mfres plot: `gnuplot order_resnet20-meanfield-s0.gp` redraws order_resnet20-meanfield-s0.png from order_resnet20-meanfield-s0.csv (the files beside it)
d = ARG0; i = strlen(d); while (i > 0 && d[i:i] ne '/') { i = i - 1 }
if (i > 0) { cd d[1:i] }
set datafile separator ','
if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 1200,420 noenhanced } else { set terminal png size 1200,420 noenhanced }
set output 'order_resnet20-meanfield-s0.png'
set grid
set multiplot layout 1,3 title 'resnet20-meanfield-s0, place of each block in the sorted order (1 = nearest the input)'
set xlabel 'epoch'
set ylabel 'position'
unset key
set ytics 1
set yrange [0.5:2.5]
set xtics 1
do for [s=1:3] {
  set title sprintf('stage %d', s)
  plot for [b=1:2] 'order_resnet20-meanfield-s0.csv' using 1:(column(1 + (s-1)*2 + b)) with linespoints pt 7 ps 0.4
}
unset multiplot
