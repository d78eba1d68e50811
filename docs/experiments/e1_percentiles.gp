set terminal pngcairo size 900,520 font 'Helvetica,11'
set output 'e1_percentiles.png'
set grid
set key outside right
set multiplot layout 1,2
set xlabel 'training step'
set key inside top left
set format x '%.0s%c'
set xtics rotate by -45
set title 'Without BN: input to one sigmoid'
plot 'e1.dat' u 1:4 w l t '15th', '' u 1:5 w l t '50th', '' u 1:6 w l t '85th'
set title 'With BN: input to one sigmoid'
plot 'e1.dat' u 1:7 w l t '15th', '' u 1:8 w l t '50th', '' u 1:9 w l t '85th'
unset multiplot
